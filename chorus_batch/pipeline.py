"""One `run`: scan -> commit -> validate -> snapshots, under the manifest's lock.

Each stage is a module with one job (scan.py, commit.py, validate_site.py, store/); this file
only opens the roots, takes the lock, logs the run, and wires the stages together.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from .classify import build_patterns
from .commit import Committed, commit, first_run_refusal, read_delete_list
from .config import RunSettings, named_roots, parse_bytes
from .faults import pause
from .partitions import TreeParts
from .errors import (AfterCommitError, ChorusError, ExitCode, ForeignSnapshots, ManifestError, ManifestLocked, MassRemovalRefused,
                     SourceError, Stopped, UsageError, committed_stays, in_one_line, machine_limit, raise_lost_stop, signals_unwrapped,
                     work_starts)
from .fsutil import check_outside_roots, missing_folders, private_folder, remove_empty_folders
from .progress import Progress, log
from .processes import refuse_while_starting
from .scan import Root, scan
from .sources import open_source
from .urls import is_remote, local_path, mask_url, protocol_of, redact, storable
from .store import Manifest
from .times import utc_now
from .units import plural, shown_name, stage_words


@dataclass(kw_only=True)  # after the commit's fields, one of which has a default
class RunResult(Committed):
    """What the commit wrote (label, counts, change_set, errors, ...), and the rest of the run."""

    db: str
    site: str
    mode: str
    dry_run: bool
    previous_label: str | None
    n_hashed: int
    bytes_hashed: int
    elapsed_s: float
    hash_s: float
    scan_started_ns: int  # recorded in `runs`: the next run's racily-clean check compares with it
    reported: bool = False  # run(report=...) wrote its summary (before `runs` recorded the run's end)
    timings: dict[str, float] = field(default_factory=dict)
    excluded: dict = field(default_factory=dict)  # what the exclusion globs left out (ScanResult.excluded)
    findings: pl.DataFrame | None = None  # FINDINGS_SCHEMA of the latest version; None when not validated
    # FINDINGS_SCHEMA of previous_label, where this run committed a version after it and both were checked: the
    # summary says what was fixed, what is new and what is still open since
    findings_before: pl.DataFrame | None = None
    cloud: bool = False  # a root is in cloud storage (the summary says where each MD5 came from)

    @property
    def exit_code(self) -> ExitCode:
        if self.refused is not None:  # a dry run that a run would refuse (--max-delete)
            return ExitCode.REFUSED
        return ExitCode.FINDINGS if self.errors.height or has_errors(self.findings) else ExitCode.OK


def has_errors(findings: pl.DataFrame | None) -> bool:
    return findings is not None and findings.filter(pl.col("severity") == "error").height > 0


def excludes_of(settings: RunSettings):
    """The exclusion globs of a run (exclude.Excludes)."""
    from .exclude import Excludes

    return Excludes(user=tuple(settings.exclude), defaults=settings.default_excludes)


def open_roots(settings: RunSettings) -> list[Root]:
    """The site root, then one root per modality (if configured)."""
    def source(location: str, what: str):
        return open_source(location, follow_symlinks=settings.follow_symlinks, workers=settings.workers,
                           cloud=settings.cloud, what=what, refuse_links=True)

    return [Root(source(location, what), modality)
            for location, what, modality in named_roots(settings.site, settings.roots)]


def run(settings: RunSettings, *, argv: list[str] | None = None, progress: Progress | None = None,
        report: Callable[[RunResult], None] | None = None, refuse_empty_first: bool = False) -> RunResult:
    """Run the pipeline once and (unless dry_run) commit a new version if anything changed.

    `refuse_empty_first` (the command line's `run` and `status`): a first run (no version yet) that would record no
    file — its roots list none, or the exclusion globs leave out every one — is refused (MassRemovalRefused, exit 5,
    recorded in `runs`; a dry run: RunResult.refused), as the same run is once a version exists (commit.
    first_run_refusal). Without it such a run ends with nothing to commit: validate --site's temporary manifest (an
    empty folder is "nothing to check") and a library caller, which reads the result.

    `report` (the command line's summary) is called with the result before the run's end is recorded in `runs`
    (RunResult.reported is then True): a summary that cannot be written (a full disk, a reader that left) is part of
    how the run ended, and `runs` records that, not the 0 of a run whose output was lost."""
    try:
        return _run_settings(settings, argv=argv, progress=progress, report=report,
                             refuse_empty_first=refuse_empty_first)
    except KeyboardInterrupt as exc:  # (the command line says it from the same attributes)
        _note_what_stands(exc)
        raise


def _note_what_stands(exc: BaseException) -> None:
    """A Ctrl-C (a notebook's "Interrupt the kernel") that stopped `run`, with what stands noted on it: a notebook
    showed a bare KeyboardInterrupt, also where the version had been committed before it (the command line says it
    from `committed` and `outcome`; a notebook never showed those). Said once: an az:// run's outer call rewrites
    what its inner one noted."""
    committed = getattr(exc, "committed", None)
    stands = getattr(exc, "outcome", None) or (f"version {committed} had been committed before; it stays" if committed
                                               else "nothing was committed")
    note = f"chorus_batch.run was interrupted: {stands}"
    notes = getattr(exc, "__notes__", [])
    if getattr(exc, "_stands_note", None) in notes:
        notes.remove(exc._stands_note)  # type: ignore[attr-defined]
    exc.add_note(note)
    exc._stands_note = note  # type: ignore[attr-defined]


def _run_settings(settings: RunSettings, *, argv: list[str] | None, progress: Progress | None,
                  report: Callable[[RunResult], None] | None, refuse_empty_first: bool = False) -> RunResult:
    """run, its note on a Ctrl-C aside."""
    refuse_while_starting()  # (a worker importing a caller's unguarded script: before the manifest is locked)
    if not isinstance(settings, RunSettings):  # a library caller's dict or path: said, not an AttributeError
        raise UsageError(f"run() takes a RunSettings, not {type(settings).__name__} {settings!r}",
                         where="chorus_batch.run(settings)",
                         fix='give RunSettings(site="/data/site", db="manifest.sqlite") (from chorus_batch import RunSettings)')
    if settings.shard is not None or settings.staging is not None:
        # A shard is scan_shard's (the command line sends it there): run() ignored them and committed the whole
        # site, a version made by what was meant as one Slurm array task's listing
        given = ", ".join(f"{name}={value!r}" for name, value in (("shard", settings.shard), ("staging", settings.staging))
                          if value is not None)
        raise UsageError(f"run() commits the whole site; RunSettings({given}) names a shard to scan into a staging "
                         "folder, which run() does not do: nothing was listed or written", where=f"RunSettings({given})",
                         fix="to write a shard, call chorus_batch.pipeline.scan_shard(settings) (then run() with "
                             "merge=<the staging folder>); for a whole run, leave shard and staging out")
    progress = progress or Progress(quiet=True)
    argv = list(argv if argv is not None else sys.argv[1:])
    if is_remote(settings.db):  # az://: a local working copy under a blob lease, uploaded after success
        from .store.remote import remote_manifest

        # the blob inside a cloud root, refused before its lease (the working copy is checked against local roots)
        check_outside_roots([(location, what) for location, what, _ in named_roots(settings.site, settings.roots)],
                            [(settings.db, "--db / [manifest] db", "the manifest")])

        result = None
        try:
            with remote_manifest(settings.db, settings.cloud, argv, read_only=settings.dry_run) as local:
                result = run(settings.model_copy(update={"db": str(local)}), argv=argv, progress=progress,  # (its summary
                             refuse_empty_first=refuse_empty_first)
                # names the manifest in Azure: printed by the caller once the result says so)
                result.change_set  # noqa: B018  read from the working copy while it exists
        except (KeyboardInterrupt, Stopped) as exc:
            _say_stopped_upload(exc, result)
            raise
        result.db = mask_url(settings.db)
        return result
    if settings.delete_list and settings.mode != "append":
        raise UsageError("--delete-list applies to append mode only", where="--delete-list",
                         fix="add --mode append, or drop --delete-list (full mode removes whatever is gone)")
    # read before the manifest is opened: a line it refuses leaves no `runs` row behind
    delete_list = read_delete_list(settings.delete_list) if settings.delete_list else None
    if settings.merge is not None:  # before the manifest is created: a usage error leaves nothing behind
        from .shards import check_staging, staging_lock

        # No shard writes inside the site (each refuses it): --merge given the site itself (or a folder in it) took
        # person folders named like shards for shards, told to rerun them there (a command each refuses), and
        # would have locked and spilled inside the site
        check_outside_roots([(location, what) for location, what, _ in named_roots(settings.site, settings.roots)],
                            [(settings.merge, "--merge", "the shards' staging folder")])
        check_staging(settings.merge)
        with staging_lock(settings.merge, merge=True):  # no shard rewritten while it is read and committed
            return _run_logged(settings, argv, progress, delete_list, report, refuse_empty_first)
    return _run_logged(settings, argv, progress, delete_list, report, refuse_empty_first)


def _say_stopped_upload(exc: BaseException, result: RunResult | None) -> None:
    """A signal while a committed working copy was uploaded back (store.remote marks it `uploaded`): what the
    manifest in Azure holds, not "nothing was committed"."""
    uploaded = getattr(exc, "uploaded", None)
    label = result.label if result is not None else getattr(exc.__context__, "committed", None)  # (AfterCommitError)
    if uploaded is None or not label:
        return
    where = getattr(exc, "remote_where", "the manifest in Azure")
    if uploaded == "done":
        exc.committed = label  # type: ignore[attr-defined]
        exc.outcome = f"version {label} was committed and uploaded to {where} before the signal; it stays"  # type: ignore[attr-defined]
    elif uploaded == "during":
        exc.outcome = (f"version {label} was committed to the local working copy, but the signal came while it was "  # type: ignore[attr-defined]
                       f"uploaded to {where}: the manifest there may or may not have it (`chorus-batch versions --db "
                       f"{where}` shows which); if not, the next run commits these changes again")
    else:
        exc.outcome = (f"version {label} was committed to the local working copy only, and the signal came before it "  # type: ignore[attr-defined]
                       f"was uploaded: nothing was committed to {where}; the next run commits these changes again")


def _run_logged(settings: RunSettings, argv: list[str], progress: Progress,
                delete_list: pl.DataFrame | None, report: Callable[[RunResult], None] | None = None,
                refuse_empty_first: bool = False) -> RunResult:
    """run, from its roots on: under the manifest's lock, logged in `runs`."""
    roots = open_roots(settings)
    manifest = Manifest(settings.db)
    made = preflight(settings, manifest)
    try:
        return _checked_run(settings, argv, progress, delete_list, roots, manifest, report, refuse_empty_first)
    finally:
        # a --parquet folder this run made and wrote nothing into (nothing committed, a refusal) is not left behind:
        # a reader refuses an empty snapshot folder
        remove_empty_folders(made)


def _checked_run(settings: RunSettings, argv: list[str], progress: Progress, delete_list: pl.DataFrame | None,
                 roots: list, manifest: Manifest, report: Callable[[RunResult], None] | None = None,
                 refuse_empty_first: bool = False) -> RunResult:
    """_run_logged once every setting was checked."""
    for position, root in enumerate(roots):  # a mistyped --site is exit 2 before the manifest is created or a `runs` row written
        try:
            root.source.check()
        except ChorusError as exc:
            # A cloud prefix whose objects are all gone (an object store has no empty folder) where the previous
            # version had files: a root that lists none, refused at the commit (exit 5, README) as an emptied local
            # folder is; it was "not found", exit 3, and --max-delete all could not pass it.
            if getattr(exc, "kind", None) != "empty_prefix" or not manifest.holds_files_under(
                    manifest.same_root_ids([(root.source.location, root.modality)]).get(0, set()),
                    unrooted=position == 0):
                if not manifest.path.exists() and getattr(exc, "outcome", None) is None:  # (not "the manifest holds
                    exc.outcome = f"nothing was committed; no manifest was made at {manifest.path}"  # what it held")
                elif _held_files_under(manifest, root, position):
                    # A root the latest version has files under, gone tonight (its mount point removed, a share
                    # renamed): a night without a version, recorded as every such run is (a mistyped --site is not)
                    with contextlib.suppress(Exception):
                        manifest.log_refused_run(redact(argv), settings.mode, site_location(settings.site),
                                                 int(exc.exit_code), f"{exc.what}; nothing was committed")
                raise
            root.source.empty_ok = True
    work_starts()  # every argument and root checked: a `run --dry-run >&-` is refused here (README: exit codes)
    site = site_location(settings.site)
    if settings.dry_run:
        if manifest.path.exists():
            manifest.require()  # read-only: an older manifest is not upgraded by a dry run
        result = _run(settings, manifest, roots, progress, run_id=None, delete_list=delete_list)
        if refuse_empty_first and result.refused is None:
            result.refused = _first_run_refused(settings, roots, result)
        return result
    new_manifest = not manifest.path.exists() or not manifest.path.stat().st_size
    if settings.merge is not None and new_manifest:
        # Shards refused (missing, stale, another manifest's) once the manifest was made left a new manifest with no
        # version, and its lock, behind: checked first (their latest is none; the merge checks them again, locked)
        from .shards import check_shards

        check_shards(Path(settings.merge), latest_label=None, settings=settings, manifest=manifest,
                     roots=[(r.source.location, r.modality) for r in roots], say_left_out=False, contents=False)
    # What stays when the run stops before its commit, said truthfully: a first run has no previous version.
    kept = nothing_committed(None) if new_manifest else None
    result: RunResult | None = None
    try:
        with manifest.lock(argv):  # before any write: a second run must not wait on SQLite's lock
            try:
                manifest.ensure_schema()
            except BaseException as exc:
                if not new_manifest:  # an older manifest's upgrade that failed (a full disk, a damaged file)
                    _log_unupgraded_run(manifest, argv, settings.mode, site, exc)
                raise
            manifest.hold()  # a manifest removed or moved from here on is said as such (Manifest.vanished)
            latest = manifest.latest_version()
            kept = nothing_committed(latest["label"] if latest else None)
            run_id = manifest.begin_run(redact(argv), settings.mode, site)
            try:
                with signals_unwrapped():  # a signal a library wrapped into its own error is the signal
                    result = _run(settings, manifest, roots, progress, run_id=run_id, delete_list=delete_list)
                    if refuse_empty_first and (refused := _first_run_refused(settings, roots, result)) is not None:
                        raise refused  # (recorded in `runs` with its exit code, below)
                    # Its end recorded in here: a signal meanwhile is said with the version committed (below)
                    pause("run-finished")  # (tests: a signal after the run's work, as `runs` records its end)
                    lost = _reported(report, result)
                    _finish_run(
                        manifest, run_id, exit_code=int(getattr(lost, "exit_code", result.exit_code)),
                        version=result.label, n_files=result.n_files, n_hashed=result.n_hashed,
                        bytes_hashed=result.bytes_hashed, n_errors=result.errors.height,
                        scan_started_ns=result.scan_started_ns, message=getattr(lost, "recorded", None),
                    )
            except ChorusError as exc:
                committed = getattr(exc, "committed", None) or manifest.committed_by_run(run_id)
                if isinstance(getattr(exc, "outcome", None), str):  # (what stands, said by the error itself)
                    message = f"{exc.what}; {exc.outcome}"  # type: ignore[attr-defined]
                else:
                    message = _with_what_stands(exc.what, committed, latest)
                _finish_run(manifest, run_id, exit_code=int(exc.exit_code), version=committed, message=message)
                raise
            except (KeyboardInterrupt, Stopped) as exc:
                code = exc.exit_code if isinstance(exc, Stopped) else int(ExitCode.INTERRUPTED)
                exc.committed = manifest.committed_by_run(run_id)  # type: ignore[union-attr]  # for a truthful message
                _finish_run(manifest, run_id, exit_code=code, version=exc.committed,  # type: ignore[union-attr]
                            message=f"stopped by signal {code - 128}")
                if exc.committed and (left := _left_after_commit(settings, manifest, exc.committed)):  # type: ignore[union-attr]
                    exc.outcome = (f"version {exc.committed} had been committed before; it stays, and the next run "  # type: ignore[union-attr]
                                   f"finishes what the signal cut short after the commit ({left})")
                raise
            except Exception as exc:
                committed = manifest.committed_by_run(run_id)
                known = machine_limit(exc)  # (the machine's limit, with its own fix: a full disk, memory)
                _finish_run(manifest, run_id, exit_code=int(known.exit_code if known else ExitCode.FAILED),
                            version=committed, message=f"{known.what if known else f'{type(exc).__name__}: {exc}'}; "
                                                       f"{_what_stands(committed, latest)}")
                if committed is None:
                    raise
                # Never let the generic message say "nothing was committed" when a version was.
                failed = AfterCommitError(
                    f"version {committed} was committed to {manifest.path}, but the run then failed: "
                    + (known.what if known else f"{type(exc).__name__}: {exc}"), where=known.where if known else str(manifest.path),
                    fix=(known.fix if known else "rerun with -v for details") + "; the version stays committed")
                failed.committed = committed
                raise failed from exc
            if (gone := manifest.vanished()) is not None:  # the version went with the file: not "committed to" it
                raise gone
            manifest.fold_wal(result.label)  # (a failure to is a warning: the version is committed, in the WAL)
            if lost is not None:  # (recorded above, with what stands: not again as a failure of the run)
                raise lost
    except ManifestLocked as exc:  # logged too: `runs` has every run (best effort, the holder may be writing)
        manifest.log_refused_run(redact(argv), settings.mode, site, int(exc.exit_code), exc.what)
        raise
    except BaseException as exc:  # stopped before its commit: say what the manifest holds (the command line prints it)
        if isinstance(exc, (KeyboardInterrupt, Stopped)) and result is not None and result.label \
                and getattr(exc, "committed", None) is None:  # (after it: as the lock is released)
            exc.committed = result.label  # type: ignore[union-attr]
        gone = manifest.vanished()
        if gone is not None and gone is not exc:  # whatever failed after, the manifest going is what happened
            if isinstance(exc, Exception):
                raise gone from exc
            exc.outcome = f"{gone.what}; {gone.outcome}"  # type: ignore[union-attr]  # (a signal: its exit code stays)
        if kept is not None and not manifest.path.exists():  # (refused before one was made: a read-only folder's lock)
            kept = f"nothing was committed; no manifest was made at {manifest.path}"
        said = kept is not None and getattr(exc, "committed", None) is None and getattr(exc, "outcome", None) is None
        if said and (isinstance(exc, (KeyboardInterrupt, Stopped)) or not isinstance(exc, ChorusError)
                     or exc.exit_code in (ExitCode.FAILED, ExitCode.REFUSED)):  # (a refusal's --json outcome was null)
            with contextlib.suppress(AttributeError, TypeError):  # (an exception type that takes no attributes)
                exc.outcome = kept + _resumes(settings, manifest)  # type: ignore[union-attr]
        raise
    return result


def _first_run_refused(settings: RunSettings, roots: list[Root], result: RunResult) -> MassRemovalRefused | None:
    """The refusal of a first run that records no file (commit.first_run_refusal), or None. Not of one that listed
    files none of which could be taken (unreadable, vanished): those are scan errors, exit 1, as the same files are
    once a version exists, and their run records them (`run_errors`)."""
    if result.label is not None or result.previous_label is not None or result.n_files or result.errors.height:
        return None
    return first_run_refusal([(root.source.location, root.modality) for root in roots],
                             result.excluded or {}, settings.max_delete)


def _held_files_under(manifest: Manifest, root: Root, position: int) -> bool:
    """Whether the manifest's latest version has files under `root` (False where it cannot be read)."""
    try:
        return bool(manifest.holds_files_under(
            manifest.same_root_ids([(root.source.location, root.modality)]).get(0, set()), unrooted=position == 0))
    except Exception:  # noqa: BLE001 - an older or damaged manifest: said by what follows, not here
        return False


def _log_unupgraded_run(manifest: Manifest, argv: list[str], mode: str, site: str, exc: BaseException) -> None:
    """A run whose upgrade of an older manifest failed (a full disk, a damaged manifest, a signal meanwhile) had no
    `runs` row: its table could not be written, and a month of such nights read as a quiet site. Its row waits beside
    the manifest (as a run the lock turned away does) for the next run that ends on it, once upgraded."""
    if isinstance(exc, (KeyboardInterrupt, Stopped)):
        code = exc.exit_code if isinstance(exc, Stopped) else int(ExitCode.INTERRUPTED)
        what = f"stopped by signal {code - 128} while the manifest was upgraded"
    else:
        known = exc if isinstance(exc, ChorusError) else machine_limit(exc)
        code = int(known.exit_code) if known is not None else int(ExitCode.FAILED)
        what = known.what if known is not None else f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):  # (best effort: what failed is what the command line says)
        manifest.log_refused_run(redact(argv), mode, site, code, f"{what}; nothing was committed")


def _reported(report: Callable[[RunResult], None] | None, result: RunResult) -> BaseException | None:
    """The run's summary written (the command line's `report`), before `runs` records the run's end. A summary that
    could not be written is returned, with the exit code the run ends with (`exit_code`: a full disk or a closed
    descriptor fails the command, 3; a reader that left keeps the run's own), what `runs` records (`recorded`) and
    what stands (`committed`, `outcome`). Recorded 0 and exited 3, `runs` said a run succeeded whose output was lost."""
    if report is None:
        return None
    result.reported = True
    try:
        report(result)
        return None
    except BrokenPipeError as exc:  # the reader left (`| head`): the run's own exit code (README), said on stderr
        exc.exit_code = int(result.exit_code)  # type: ignore[attr-defined]
        what = "its summary was cut: the reader of standard output left before it was all written"
        lost: BaseException = exc
    except ChorusError as exc:  # (the command line's OutputError: a full disk, /dev/full, a closed descriptor)
        what = exc.what
        lost = exc
    if result.label:
        shows = shlex.join(["chorus-batch", "changes", "--db", str(result.db), "--version", result.label])
        stands = f"version {result.label} was committed to {result.db}; only this summary was not written (`{shows}` shows it)"
    elif result.refused is None:
        kept = (f"version {result.previous_label} stays the latest" if result.previous_label
                else "the manifest holds no version yet")
        stands = f"nothing was committed (no changes to commit); {kept}; only this summary was not written"
    else:
        stands = "nothing was committed; only this summary was not written"
    lost.committed = result.label  # type: ignore[attr-defined]
    lost.outcome = stands  # type: ignore[attr-defined]
    lost.recorded = f"{what}; {stands}"  # type: ignore[attr-defined]
    return lost


def _resumes(settings: RunSettings, manifest: Manifest) -> str:
    """What a run stopped before its commit adds to "nothing was committed" when it checkpointed hashes: that the
    next run reuses them (else the user could not tell a rerun from starting over)."""
    if settings.dry_run or settings.merge is not None or settings.shard is not None:  # (they keep none)
        return ""
    from .checkpoint import resumable

    with contextlib.suppress(Exception):  # (only words: never in the way of the run's own error)
        if (folder := resumable(manifest.path, *manifest.state_identity())) is not None:
            return (f"; the files it hashed are checkpointed in {folder}: run the same command again, and they are not "
                    "read again")
    return ""


def _check_still_latest(settings: RunSettings, manifest: Manifest, previous_label: str | None) -> None:
    """Refuse the commit when another run committed a version while this one listed and hashed: its lock file was
    removed or replaced under it (a clean-up of old files in the manifest's folder, a file system that does not keep
    locks), so both held "the" lock. The commit's own guard refused it as a caller's mistake ("previous_label is ...,
    fix: pass previous_label=manifest.latest_version()..."), exit 2, and `runs` said the older version stayed the
    latest."""
    if manifest.vanished() is not None:
        return  # (the manifest itself removed or replaced under the run: said as such by the commit, not as a run)
    now = manifest.latest_version()
    label = now["label"] if now else None
    if label == previous_label or label is None:  # (no version now where there was one: not another run's commit)
        return
    lock = f"{manifest.path}.lock"
    error = ManifestLocked(
        f"another run committed version {label} to {manifest.path} while this run listed and hashed the site "
        f"(against version {previous_label or '(none)'}): the lock file {lock} was removed or replaced while this run "
        "held it, so both ran at once", where=lock,
        fix="run the same command again (it compares the site with the new latest version); keep the manifest's "
            "lock file out of clean-ups of its folder, and the manifest on a file system that keeps locks")
    error.outcome = (f"nothing was committed by this run; version {label}, the other run's, is the latest"  # type: ignore[attr-defined]
                     + _resumes(settings, manifest))
    raise error


def _what_stands(committed: str | None, latest: dict | None) -> str:
    """What `runs` records beside a failed run's error: the version it committed, or that it committed none."""
    if committed:
        return committed_stays(committed)
    return nothing_committed(latest["label"] if latest else None)


def _with_what_stands(what: str, committed: str | None, latest: dict | None) -> str:
    """A failed run's error as `runs` records it, with what stands; an error that says itself that nothing was
    committed (a refusal: --max-delete, an empty root) is not told so twice ("...; nothing was committed (the run
    would remove ...); nothing was committed; version ... stays the latest"): only which version stays is added."""
    stands = _what_stands(committed, latest)
    if committed and what.startswith(f"version {committed} was committed"):
        # (said already: "version X was committed to M, but what follows the commit failed: ...; version X was
        # committed before the failure; it stays")
        stands = f"version {committed} stays"
    if not committed and "nothing was committed" in what:
        stands = stands.removeprefix("nothing was committed; ").removeprefix("nothing was committed: ")
    return f"{what}; {stands}"


def nothing_committed(latest: str | None) -> str:
    """What a run stopped before its commit leaves: the previous version, or (a first run) no version at all."""
    if latest is None:
        return "nothing was committed: no version was written, and the manifest holds none yet"
    return f"nothing was committed; version {latest} stays the latest"


def _finish_run(manifest: Manifest, run_id: int, **outcome) -> None:
    """Record how the run ended in `runs`. Bookkeeping: when it fails (a full disk), the run's own outcome (its
    first error, or the version it committed) is still what is reported and exited with; this failure is said
    beside it, never in its place."""
    if manifest.vanished() is not None:  # (no run log to write: the run's error says what became of it)
        with contextlib.suppress(OSError):  # (nor the room kept for its outcome beside it)
            manifest.run_outcome.unlink()
        return
    try:
        manifest.finish_run(run_id, **outcome)
    except Exception as exc:
        said = in_one_line(exc)
        # noted beside it for the next run to record: left unfinished, the run was recorded as killed (137)
        noted = (f"it is noted in {shown_name(manifest.run_outcome.name)} beside it, and the next run records it there"
                 if manifest.note_run_outcome(run_id, **outcome) else
                 "nor noted beside it: the next run records it as ended without a word (137)")
        log.warning(f"this run's outcome could not be recorded in the run log (`runs`) of {manifest.path}: {said}; "
                    f"{noted}; what follows is what the run did")


def status(settings: RunSettings, *, argv: list[str] | None = None, progress: Progress | None = None,
           refuse_empty_first: bool = False) -> RunResult:
    """`chorus-batch status`: what a run would commit, path by path (RunResult.change_set), and the findings
    validation would give (RunResult.findings, unless validation is off); nothing is written. `refuse_empty_first`:
    as run's (RunResult.refused)."""
    return run(settings.model_copy(update={"dry_run": True}), argv=argv, progress=progress,
               refuse_empty_first=refuse_empty_first)


def site_location(site: str) -> str:
    """The site as recorded in `runs` and `versions` (and titled in the report): a local folder as the POSIX form
    of its resolved path, a URL as given but with its secrets masked."""
    path = local_path(site)
    if path is None:
        return mask_url(site)
    return storable(Path(path).resolve().as_posix())  # (a folder reached through a link may not be UTF-8)


def _array_start_said(shard: str | None) -> str:
    """What to pass in an array whose task ids do not start at 0 (`--array=1-4`, SLURM_ARRAY_TASK_MIN 1) when --shard
    was given this task's id as K: `--shard "$SLURM_ARRAY_TASK_ID/N"`, the advice the shard was told, made its tasks
    write shards 1 to 3 and refused the last ("4/4"); shard 0 was never written. "" otherwise."""
    task, first = os.environ.get("SLURM_ARRAY_TASK_ID", ""), os.environ.get("SLURM_ARRAY_TASK_MIN", "0")
    given = re.fullmatch(r"\s*([0-9]+)\s*/.*", shard or "", re.ASCII)
    if not (given and re.fullmatch(r"[0-9]+", task.strip(), re.ASCII) and re.fullmatch(r"[0-9]+", first.strip(), re.ASCII)):
        return ""
    if int(first) == 0 or int(given.group(1)) != int(task):
        return ""
    return (f"; this Slurm array's task ids start at {int(first)} (SLURM_ARRAY_TASK_MIN), not 0, so a --shard "
            "\"$SLURM_ARRAY_TASK_ID/N\" leaves shard 0 out and the last task's is no shard: leave --shard out (the "
            "shard is then the task id minus SLURM_ARRAY_TASK_MIN), pass --shard "
            "\"$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))/N\", or submit the array as --array=0-(N-1)")


def scan_shard(settings: RunSettings, *, progress: Progress | None = None):
    """`run --shard K/N --staging DIR`: scan one shard into the staging folder (shards.py); the manifest is
    only read. Returns a shards.ShardReport."""
    from .coverage import parse_shard, shard_from_environment
    from .shards import run_shard

    if settings.merge is not None:  # (first: "--shard needs --staging" or "--staging without a shard" was said)
        given = " and ".join(option for option, value in (("--shard", settings.shard), ("--staging", settings.staging))
                             if value is not None)
        raise UsageError(f"--merge does not go with {given}: a merge commits the shards a staging folder holds, a "
                         "shard is written into one; nothing was listed or written", where=f"--merge, {given}",
                         fix=f"to merge, drop {given} (--merge DIR names the shards' staging folder); to write a "
                             "shard, drop --merge")
    if settings.staging is None:
        raise UsageError("--shard needs --staging", where="--staging", fix="add --staging DIR (shared by all shards)")
    try:
        coverage = parse_shard(settings.shard) if settings.shard else shard_from_environment()
    except ValueError as exc:
        from .coverage import BUCKETS

        raise UsageError(f"invalid shard: {exc}{_array_start_said(settings.shard)}; nothing was listed or written",
                         where="--shard" if settings.shard else "SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT",
                         fix=f"give --shard K/N with 0 <= K < N <= {BUCKETS} (the script `chorus-batch slurm-script` "
                             "prints passes it)") from None
    if settings.shard:  # an array whose every task was given one --shard writes one shard N times, the others never
        with contextlib.suppress(ValueError):
            own = shard_from_environment()
            if own is not None and own != coverage:
                log.warning(f"--shard {coverage.shard}/{coverage.shards} is listed, not this Slurm array task's own "
                            f"shard {own.shard}/{own.shards} (SLURM_ARRAY_TASK_ID {os.environ['SLURM_ARRAY_TASK_ID']})"
                            + (_array_start_said(settings.shard) or "; in an array, pass --shard "
                               "\"$SLURM_ARRAY_TASK_ID/N\" or leave --shard out"))
    if coverage is None:
        raise UsageError("--staging without a shard", where="--shard",
                         fix="add --shard K/N, or run it as a Slurm array task (SLURM_ARRAY_TASK_ID is then used)")
    if settings.dry_run or settings.merge or settings.mode != "full" or is_remote(settings.db):
        raise UsageError("a shard scans a local manifest's site in full mode; --dry-run, --merge, --mode append and a "
                         "manifest in Azure do not go with --shard", where="--shard",
                         fix="drop those options (the merge commits; its manifest may then be uploaded)")
    from .fsutil import private_folder
    from .shards import shard_folder

    roots = open_roots(settings)
    preflight(settings, Manifest(settings.db))
    if not Path(settings.db).exists():  # a shard only reads the manifest; the merge would refuse this folder anyway
        from .store.manifest import require_folder

        require_folder(Path(settings.db))
    private_folder(shard_folder(settings.staging, coverage))  # a --staging that cannot hold it: said before the listing
    return run_shard(settings, roots, coverage, settings.staging, progress)


def preflight(settings: RunSettings, manifest: Manifest) -> list[Path]:
    """Every argument and setting checked before any listing: a mistake costs seconds, not a night. Returns the
    folders it made (the --parquet folder and its missing parents, deepest first)."""
    made: list[Path] = []
    from .commit import next_label
    from .config import CONFIG_HELP, check_roots, parse_bytes, parse_max_delete
    from .processes import ensure_address_space, ensure_open_files
    from .store.schema import SCHEMA_VERSION as current_schema

    manifest.check_path()
    check_roots(settings)
    ensure_open_files(settings.workers)
    ensure_address_space()
    if settings.shard is None and settings.staging is None:  # (a shard commits nothing: its merge is told)
        # (none yet: no file; an older schema: the label is checked at the commit, after the upgrade a run makes, and a
        # dry run refuses the manifest anyway; reading it here said "SQLite failed: no such table: versions")
        latest = manifest.latest_version() if manifest.schema_on_disk() == current_schema else None
        # a label refused (or one the latest version's cannot be followed by) is said before the listing
        next_label(utc_now(), latest["label"] if latest else None, settings.version_label)
        if latest is not None and settings.version_label is not None:
            # v1 after V1 sorts after it, but is V1's folder on a disk that ignores case (Windows, macOS: the Parquet
            # snapshots' version=v1/, a reviewer's download of the central container): the two versions would mix
            twin = manifest._one("SELECT label FROM versions WHERE lower(label) = lower(?) LIMIT 1",
                                 (settings.version_label,))
            if twin is not None:
                raise UsageError(f"version label {settings.version_label!r} differs from the label of version "
                                 f"{twin[0]!r} only in letter case: their folders (at the central container, in "
                                 "Parquet snapshots) are one folder on a disk that ignores case (Windows, macOS)",
                                 where="--version", fix="choose another label, or omit --version to use the UTC start "
                                                        "time")
    if settings.version_label is not None:
        from datetime import timezone

        from .commit import LABEL_FORMAT

        try:  # (14 digits that are no time, 20261301000000, are no timestamp either)
            when = datetime.strptime(settings.version_label, LABEL_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            when = None
        if when is not None and when > utc_now() + timedelta(minutes=1):
            # The versions after a timestamp label are labelled one second after the latest while it is ahead of the
            # clock: a mistyped year labelled every night of the next year with a made-up time, each a folder at the centre
            log.warning(f"version label {settings.version_label!r} is a UTC time in the future ({when:%Y-%m-%d %H:%M:%S}"
                        " UTC): until then, the versions after it are labelled one second after the latest, not by "
                        "their UTC start; omit --version to label this version by its UTC start")
        if not settings.version_label.isdigit() or len(settings.version_label) != 14 or when is None:
            # Data-Upload-Update...: "each submission will be placed in a top level folder named with a timestamp of
            # the format YYYYMMDDhhmmss"; upload names the folder by the label
            log.warning(f"version label {settings.version_label!r} is not a UTC timestamp (YYYYMMDDhhmmss): the CHoRUS "
                        "upload procedure names each submission's top-level folder at the central container with such "
                        "a timestamp, and, if this run commits a version, `upload` will name this version's folder "
                        f"'{settings.version_label}/' (the versions after it are labelled "
                        f"'{settings.version_label}-<UTC start>'); omit --version to keep the procedure's names")
    for check, value, where, fix in (
        (parse_max_delete, settings.max_delete, "--max-delete / max_delete in [run]",
         "give a percentage (50%), a number of files (1000) or all"),
        (parse_bytes, settings.verify_max_bytes, "--verify-max-bytes / verify_max_bytes in [run]",
         "give a byte count such as 10GiB or 500MB"),
    ):
        try:
            check(value)
        except ValueError as exc:
            raise UsageError(f"invalid {where.split(' ')[0]}: {exc}", where=where, fix=fix) from None
    from .exclude import glob_problem
    from .units import quoted

    for pattern in settings.exclude:
        problem = glob_problem(pattern)
        if problem:
            raise UsageError(f"invalid exclusion glob {quoted(storable(pattern))}: {problem}", where="--exclude / exclude in [run]",
                             fix="give a file-name glob such as *.tmp, or a site-relative path glob such as scratch/* "
                                 f"({CONFIG_HELP})")
    # (a library caller's RunSettings(patterns=...) with a bad regex was refused only in _run: after the manifest file was
    # made and a `runs` row written; the command line checks chorus.toml's before)
    build_patterns(settings.patterns)
    _check_outside_roots(settings, manifest.path)
    if settings.parquet and "://" in settings.parquet:
        raise UsageError(f"--parquet {mask_url(settings.parquet)}: Parquet snapshots are written to a local folder",
                         where="--parquet / [manifest] parquet", fix="give a local folder (it is created)")
    if settings.parquet and storable(settings.parquet) != settings.parquet:  # (polars takes UTF-8 paths only: the
        # version was committed, then the snapshot failed with "TypeError: Object does not have a .write() method")
        raise UsageError(f"--parquet {storable(settings.parquet)}: the folder's path is not valid UTF-8 (shown as \\x.. "
                         "escapes), and Parquet snapshots are written by UTF-8 paths only; nothing was done",
                         where="--parquet / [manifest] parquet",
                         fix="give a folder whose path is UTF-8 (rename the folder, or choose another)")
    if settings.parquet:  # (`--parquet "$SNAPS"` read from a CRLF file: a new folder 'snapshots\r' beside the site's)
        from .urls import refuse_blank_ends, refuse_too_long

        refuse_blank_ends(settings.parquet, "--parquet / [manifest] parquet", "the snapshot folder's name")
        refuse_too_long(settings.parquet, "--parquet / [manifest] parquet")
    if settings.parquet:  # (checked in a dry run and `status` too: they said all was well of a run refused exit 2)
        folder = Path(settings.parquet)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--parquet names a file, not a folder: {folder}", where="--parquet / [manifest] parquet",
                             fix="pass --parquet with a folder (it is created)")
        from .store.snapshots import refuse_inside_snapshots

        refuse_inside_snapshots(folder)  # (before the folder is made)
    if settings.parquet and not settings.dry_run:  # a dry run creates nothing
        folder = Path(settings.parquet)
        made = missing_folders(folder)
        try:
            private_folder(folder)  # 0700 with its missing parents
        except OSError as exc:
            raise UsageError(f"cannot create the Parquet folder: {exc.strerror or exc}", where=str(folder),
                             fix="pass --parquet with a folder this user can write") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"the Parquet folder is not writable: {folder}", where=str(folder),
                             fix="pass --parquet with a folder this user can write")
    if settings.parquet and manifest.schema_on_disk() in (None, current_schema):
        # (another manifest's snapshot folder: refused before the listing, not after the commit; an older schema's
        # manifest is checked after its upgrade, when its snapshots are written; a dry run reads it alike)
        from .store.snapshots import check_owner

        check_owner(manifest, settings.parquet)
    return made


def _check_outside_roots(settings: RunSettings, manifest_path: Path) -> None:
    """The manifest, --parquet and --staging lie outside the site's local roots (fsutil.check_outside_roots)."""
    check_outside_roots(
        [(location, what) for location, what, _ in named_roots(settings.site, settings.roots)],
        [(manifest_path, "--db / [manifest] db", "the manifest"),
         *((path, where, name) for path, where, name in (
             (settings.parquet, "--parquet / [manifest] parquet", "the Parquet snapshot folder"),
             (settings.staging, "--staging", "the shards' staging folder")) if path and "://" not in path)])


def _after_commit(settings: RunSettings, manifest: Manifest, roots: list[Root], check: str | None, label: str | None,
                  progress: Progress, mark, t: float):
    """Validation of the version (cached: a version already validated is not checked again) and its
    Parquet snapshot (written again if a killed run left it incomplete)."""
    findings = None
    if settings.validate_site and check:
        from .validate.run import by_root_id, validate_version

        progress.stage("checking the site against the CHoRUS procedures")
        sources = {(r.source.location, r.modality): r.source for r in roots}
        findings = validate_version(manifest, check, by_root_id(manifest, sources), workers=settings.workers,
                                    progress=progress, excludes=excludes_of(settings).patterns)
        t = mark("validate", t)
    if settings.parquet and check:
        from .processes import signals_deferred

        with signals_deferred():  # (it imports DuckDB: a signal inside its module initialisation aborts the process)
            from .store.snapshots import write_missing_snapshots

        # the new version's, and any a killed run left incomplete or that predate --parquet (backfilled)
        earlier = [done for done in write_missing_snapshots(manifest, settings.parquet, label) if done != label]
        if earlier:  # said: a run that committed nothing wrote them (the summary says "nothing committed")
            from .progress import log

            log.warning("wrote the Parquet snapshot of %s in %s: it was missing or incomplete (a run stopped after "
                        "its commit, or --parquet given since)", f"version {earlier[0]}" if len(earlier) == 1 else
                        f"{len(earlier)} versions ({earlier[0]} to {earlier[-1]})", settings.parquet)
    return findings, t


def _left_after_commit(settings: RunSettings, manifest: Manifest, label: str) -> str | None:
    """What a run stopped after committing version `label` left undone of what follows the commit (its check
    against the procedures, its Parquet snapshot), as the stopped run's message says it; None: nothing. Decided by
    what the manifest and the snapshot folder hold, not by where the signal came: one between the commit and the
    check (as the state cache was written) said "it stays" alone, and the version's check seemed done."""
    left = []
    with contextlib.suppress(Exception):  # (best effort: a manifest gone meanwhile is said as such elsewhere)
        if settings.validate_site and not manifest.validation.is_validated(label):
            left.append("its check against the procedures")
    if settings.parquet:
        from .processes import signals_deferred

        with signals_deferred():  # (it imports DuckDB: a second signal inside its module initialisation aborts)
            from .store.snapshots import has_snapshot

        with contextlib.suppress(Exception):
            if not has_snapshot(label, settings.parquet):
                left.append("its Parquet snapshot")
    return ", ".join(left) or None


def _finish_merged(settings: RunSettings, manifest: Manifest, roots: list[Root], merged: Exception, progress: Progress,
                   mark, t: float) -> None:
    """A merge run again (a requeued merge job) whose shards are the latest version already: what the merge that
    committed them was stopped before, after its commit (its check against the procedures, its Parquet snapshot: a
    node lost or a time limit during the check), is done now, and said in the refusal. It was refused as "nothing to
    do for these shards", and the version stayed unchecked, though that merge's own message ("the next run finishes
    what the signal cut short after the commit") sent the user to run it again."""
    label = merged.merged_into  # type: ignore[attr-defined]
    unchecked = settings.validate_site and not manifest.validation.is_validated(label)
    if not unchecked and not settings.parquet:
        return
    # (a version checked already is not said to be checked again)
    findings, _ = _after_commit(settings.model_copy(update={"validate_site": unchecked}), manifest, roots, label, None,
                                progress, mark, t)
    if unchecked and findings is not None:
        counts = dict(findings.group_by("severity").len().iter_rows())
        merged.what += (f"; the check of version {label} against the procedures, which the merge that committed it "  # type: ignore[attr-defined]
                        f"did not finish, was done now: {plural(counts.get('error', 0), 'error')}, "
                        f"{plural(counts.get('warning', 0), 'warning')} (`chorus-batch validate --db {manifest.path}` lists "
                        "them)")


def _check_roots_stayed(roots: list[Root]) -> None:
    """A local root renamed, removed or unmounted while the run listed and hashed it is refused before the commit:
    each file not yet read was recorded `vanished` and the version committed anyway (exit 1), a renamed file's old
    path as removed. Nothing is committed; what was hashed is checkpointed for the next run."""
    for root in roots:
        check = getattr(root.source, "gone_since_listing", None)
        why = check() if check is not None else None
        if why is not None and callable(changed := getattr(root.source, "changed_during_run", None)):
            raise changed(why)  # a cloud prefix: its objects deleted, or one object named like it, since it was listed
        if why is not None:
            where = root.source.what if hasattr(root.source, "what") else "--site / [site] root"
            raise SourceError(
                f"the {'site root' if root.modality is None else 'root'} {root.source.description} {why}: it was "
                "renamed, removed or unmounted while this run listed and hashed it", where=where,
                fix="put the folder back (mount the file system again, or rename it back), then run again: the files "
                    "hashed so far are not read again")


def commit_stage_words(dry_run: bool, label: str | None, refused: bool) -> str:
    """The commit stage as -v names it (its timing line, and `time by stage`): only a stage that committed says so."""
    if label is not None:
        return stage_words("commit")
    if dry_run:
        return "working out what would be committed (a dry run: nothing written)"
    return f"comparing with the previous version ({'refused: nothing committed' if refused else 'nothing to commit'})"


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1e6


def _run(settings: RunSettings, manifest: Manifest, roots: list[Root], progress: Progress, *,
         run_id: int | None, delete_list: pl.DataFrame | None = None) -> RunResult:
    t_start = t = time.perf_counter()
    started = utc_now()
    timings: dict[str, float] = {}

    def mark(stage: str, since: float, words: str | None = None) -> float:
        # `words`: what the stage did, where its name would say more (a dry run's "commit" commits nothing)
        raise_lost_stop()
        now = time.perf_counter()
        timings[stage] = round(now - since, 4)
        log.debug(f"{words or stage_words(stage)} took {now - since:.3f} s (peak RSS {_peak_rss_mb():.0f} MB)")
        return now

    patterns = build_patterns(settings.patterns)
    latest = manifest.latest_version()
    previous_label = latest["label"] if latest else None

    checkpoint = None
    previous: pl.DataFrame | TreeParts

    def cache_facts(facts: pl.DataFrame) -> None:
        # Parsed while hashing: cached by content as they come (hashing.FACTS_HANDED_EVERY), before the commit, so
        # that validation finds them (one read per file) and neither the scan, the commit nor validation holds them
        # (1M files: ~200-300 MB). A cache by content, not part of a version: kept if the commit then fails, and a
        # rerun need not parse them again.
        manifest.validation.save_facts(facts, replace=False, read_back=False)

    if not settings.dry_run:  # what a former name of this manifest left beside it
        manifest.adopt_renamed()
    if settings.merge is not None:  # the shards' scans, checked, read partition by partition (shards.py)
        from .shards import MergedAlready, read_shards

        progress.stage(f"merging the shards in {settings.merge}")
        try:
            scanned, previous = read_shards(settings.merge, latest_label=previous_label, settings=settings,
                                            manifest=manifest, previous_rows=latest["n_files"] if latest else 0,
                                            partitioned=not settings.dry_run,
                                            roots=[(r.source.location, r.modality) for r in roots])  # each checked
        except MergedAlready as exc:
            if not settings.dry_run and exc.merged_into == previous_label:
                _finish_merged(settings, manifest, roots, exc, progress, mark, t)
            raise
        t = mark("load_previous", t)
    else:
        from .checkpoint import Checkpoint

        previous = manifest.previous_state(write_cache=not settings.dry_run, buckets=True)  # the commit slices by bucket
        t = mark("load_previous", t)
        # Hashes an interrupted run of this manifest state left, and where this run's are checkpointed (a
        # dry run only reads them).
        checkpoint = Checkpoint.open(manifest.path, *manifest.state_identity(), writable=not settings.dry_run)
        scanned = scan(roots, previous, based_on=previous_label, last_scan_ns=manifest.last_scan_started_ns(),
                       racy_window_s=settings.racy_window_s, rehash=settings.rehash, workers=settings.workers,
                       progress=progress, verify_percent=settings.verify_sample,
                       verify_max_bytes=parse_bytes(settings.verify_max_bytes), cloud_md5=settings.cloud_md5,
                       excludes=excludes_of(settings), checkpoint=checkpoint,
                       facts=settings.validate_site and not settings.dry_run, mtime_unit_ns=manifest.mtime_unit_ns(),
                       on_facts=cache_facts)
    timings.update(scanned.timings)
    _check_roots_stayed(roots)
    t = time.perf_counter()
    if scanned.facts is not None and not settings.dry_run:  # the shards' facts
        cache_facts(scanned.facts)
        scanned.facts = None
        t = mark("cache_facts", t)
    if not settings.dry_run:
        _check_still_latest(settings, manifest, previous_label)
    try:
        committed = commit(manifest, scanned, previous, previous_label=previous_label, patterns=patterns,
                           mode=settings.mode, delete_list=delete_list, started=started,
                           version_label=settings.version_label, site=settings.site_name or site_location(settings.site),
                           run_id=run_id, threads=settings.workers, dry_run=settings.dry_run, progress=progress,
                           max_delete=settings.max_delete,
                           spill_parent=settings.merge,  # a merge spills beside its shards (owner-only, removed after)
                           keep_scan=False)
    except ManifestError as exc:
        if settings.merge is None or "conflicts with its recorded rows" not in exc.what:
            raise
        from .shards import repeated_path

        raise (repeated_path(settings, settings.merge) or exc) from None  # (a shard listing a path twice: named)
    del previous
    if checkpoint is not None:
        checkpoint.remove()  # committed (or nothing to commit): its hashes are in the manifest now
    elif settings.merge is not None and not settings.dry_run:
        from .checkpoint import discard

        # A killed plain run's checkpoint (person ids, MD5s) would outlive this commit, for good on a site only
        # ever run as shards
        discard(manifest.path, "this merge recorded the site's hashes from its shards")
    # (the --json key stays "commit"; -v says what the stage did: `status` logged "commit took" of a dry run)
    t = mark("commit", t, commit_stage_words(settings.dry_run, committed.label, committed.refused is not None))
    label = committed.label
    # What the result needs of the scan; the rest of it (its files) is let go before validation, which reads
    # the version from the manifest (a 1M-file first run's peak RSS: 2.57 -> 2.33 GB).
    scan_figures = {
        "n_hashed": scanned.n_hashed, "bytes_hashed": scanned.bytes_hashed, "hash_s": scanned.hash_s,
        "scan_started_ns": scanned.scan_started_ns, "excluded": scanned.excluded}
    del scanned
    findings = None
    if settings.dry_run and settings.validate_site and committed.pending is not None:
        from .validate.run import validate_pending

        progress.stage("checking what would be committed against the CHoRUS procedures (nothing is written)")
        findings = validate_pending(manifest, committed.pending, roots, errors=committed.errors, workers=settings.workers,
                                    progress=progress, excludes=excludes_of(settings).patterns)
        t = mark("validate", t)
    elif not settings.dry_run:
        try:
            findings, t = _after_commit(settings, manifest, roots, label or previous_label, label, progress, mark, t)
        except (KeyboardInterrupt, Stopped):
            raise  # (said with what the commit left to do: _run_logged)
        except Exception as exc:
            if label is None:
                raise
            exc = machine_limit(exc) or exc  # (said as the machine's limit, with its fix, as before the commit)
            what = in_one_line(exc)
            # what is left, read from the manifest and the snapshot folder: a failed snapshot of a checked version
            # was said as "the next run checks it again"
            left = _left_after_commit(settings, manifest, label)
            failed = AfterCommitError(
                f"version {label} was committed to {manifest.path}, but what follows the commit failed: {what}",
                where=getattr(exc, "where", None) or str(manifest.path),
                fix=(getattr(exc, "fix", None) or "rerun with -v for details") + "; the version stays committed"
                # (a folder of another manifest's refuses the next run given it too: said only of one of its own)
                + ((f" (the next run given a --parquet folder of this manifest's own finishes {left})"
                    if isinstance(exc, ForeignSnapshots) else f" (the next run finishes {left})") if left else ""))
            failed.committed = label
            raise failed from None

    findings_before = None
    if label is not None and previous_label is not None and findings is not None:
        try:  # (a summary's comparison, never the run's failure: the version and its findings stay as they are)
            before, rules = manifest.validation.checked(previous_label)
            findings_before = before if any(rules) or before.height else None
        except Exception as exc:  # pragma: no cover - a manifest read just written
            log.warning(f"the findings of version {previous_label} could not be read to compare: {in_one_line(exc)}")
    if label is None and not settings.dry_run and settings.version_label is not None:
        # (the label was warned of up front as this version's folder: said unused, so no one looks for it at the centre)
        log.warning(f"version label {settings.version_label!r} (--version) was not used: this run made no version "
                    "(nothing to commit); give it to the run that commits the next change")
    return RunResult(
        **vars(committed), db=str(manifest.path.resolve()), site=site_location(settings.site), mode=settings.mode,
        dry_run=settings.dry_run, previous_label=previous_label, **scan_figures,
        elapsed_s=time.perf_counter() - t_start, timings=timings, findings=findings, findings_before=findings_before,
        cloud=any(protocol_of(location) != "file" for location, _, _ in named_roots(settings.site, settings.roots)
                  if location),
    )
