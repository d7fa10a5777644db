"""`import-journal`: a new manifest holding a chorus-upload journal's whole history.

Each upstream version is replayed through chorus-batch's own commit (commit.commit): its tree, rebuilt
from the journal's validity intervals (journal.version_trees), is committed as the next version, with
the upstream label and run times. So the change sets are chorus-batch's own diff (added, removed,
replaced, renamed: upstream never saw renames), person ids and classification come from the paths with
today's patterns (the folder keeps the zeros the journal's integer column lost), and an mtime-only change
updates the row in place as a run would. Upstream's MD5s are kept (md5_source 'imported'), with mtimes
in microseconds, as upstream recorded them: the manifest says so (meta mtime_unit_ns), and the next run
compares them at that precision, so it hashes nothing upstream hashed.

The upload marks become rows of the uploads ledger (state 'imported', not verified) for the central
container given, so that `upload` sends only what upstream had not sent, and `verify` checks them.

The manifest is built in a private temporary file beside the target and appears under its name only
when complete (a hard link, which never replaces a file that appeared meanwhile): an import that fails
or is killed leaves no manifest behind, and an existing manifest is never written over.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

import polars as pl

from ..errors import ChorusError, ExitCode, UsageError
from ..frames import SCANNED_SCHEMA, empty_errors, fmt
from ..fsutil import missing_folder, write_private
from ..sources.remote import mask_url
from ..store.manifest import Manifest, give_back_freed_memory, importing_path, refuse_unwritable_name, remove_killed_imports
from ..units import command_word, plural
from .journal import PROBLEM_SCHEMA, Journal, VersionTree, checked_rows, read_journal, upload_marks, version_trees

MTIME_UNIT_NS = 1000  # chorus-upload keeps SRC_MODTIME_us
_SEVERITY = {"import.replaced-empty-manifest": "info", "import.no-history": "info", "import.merged-updates": "info", "import.unread-columns": "info",
             "import.unsent-mark": "info"}  # others: warning


@dataclass
class ImportedVersion:
    label: str
    n_files: int
    counts: dict[str, int]  # added, removed, replaced, renamed, unchanged
    updates: int  # upstream `journal update` runs it stands for


@dataclass
class ImportResult:
    journal: str
    journal_schema: int
    db: str
    dry_run: bool
    central: str | None
    versions: list[ImportedVersion] = field(default_factory=list)
    unchanged_updates: list[str] = field(default_factory=list)  # updates that changed no file's content: no version
    n_rows: int = 0
    n_marks: int = 0  # upload marks recorded in the ledger
    replaced: bool = False  # the import took the place of a manifest without history (a first run's, stopped)
    findings: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"severity": pl.String, **PROBLEM_SCHEMA}))
    status: object | None = None  # pipeline.RunResult of the check against --site
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        status_code = int(getattr(self.status, "exit_code", 0) or 0)
        return int(ExitCode.FINDINGS) if not_notes(self.findings).height or status_code else int(ExitCode.OK)


def not_notes(findings: pl.DataFrame) -> pl.DataFrame:
    """What the import could not map (warnings); notes (info) say how it read the journal."""
    return findings.filter(pl.col("severity") != "info")


def import_journal(journal_path: str, db: str, *, site: str | None = None, site_roots: dict[str, str] | None = None,
                   central: str | None = None, patterns: dict[str, list[str]] | None = None, dry_run: bool = False,
                   argv: list[str] | None = None, cloud=None, progress=None,
                   max_delete: str | int = "50%") -> ImportResult:
    """Import the journal at `journal_path` into a new manifest `db` (a dry run builds it in a temporary file and
    removes it). `site`: the tree as it is now, recorded as the root and checked as `status` would; `central`:
    the az:// container the upload marks are for (default: the one upstream uploaded to, if it is one);
    `max_delete`: [run] max_delete, what a version may remove before it is said (a run refuses it)."""
    from ..config import CloudSettings, RunSettings
    from ..progress import Progress

    started = time.monotonic()
    progress = progress or Progress(quiet=True)
    target = Path(db)
    if "://" in db:
        raise UsageError("import-journal writes a new local manifest", where=f"--db {db}",
                         fix="import into a local file, then copy it where the site keeps its manifest")
    if target.is_dir():  # (`run --db FOLDER` says the same; "move the existing manifest away" fits no folder)
        raise UsageError(f"--db names a folder, not a manifest file: {db}", where=db,
                         fix=f"pass --db with a new file path, e.g. {target / 'chorus_manifest.sqlite'}")
    # A manifest that a first run left without any version (stopped or killed before its commit) holds no history of
    # the site: the import takes its place, as the user who meant to start from the journal expects (it was refused
    # with "move the existing manifest away", though nothing in it was worth keeping).
    empty = not target.is_symlink() and _without_history(target)
    if (target.exists() or target.is_symlink()) and not empty:
        raise UsageError(f"{db} exists{' (a symbolic link)' if target.is_symlink() else ''}; import-journal builds a "
                         "new manifest and never writes over one", where=db,
                         fix="pass --db with a new file name (or move the existing manifest away first)")
    if not target.parent.is_dir():
        why, fix = missing_folder(target)
        raise UsageError(f"cannot write {db}: {why}", where=db, fix=f"{fix} for --db")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in the folder of {db}", where=str(target.parent.resolve()),
                         fix="pass --db in a folder you can write to")
    refuse_unwritable_name(target)  # (checked before the import: it built the whole manifest, then failed)

    progress.stage(f"reading {mask_url(journal_path)}")
    journal = _read(journal_path, cloud)
    give_back_freed_memory()  # (the rows were fetched as Python tuples: their C heap pages, ~140 MiB at 1M rows)
    rows, problems, ended_marks = checked_rows(journal.rows, windows=journal.windows or os.name == "nt")
    n_rows, journal.rows = journal.rows.height, journal.rows.clear()  # one copy of the rows in memory, not two
    trees, tree_problems, rows = version_trees(journal, rows)
    if journal.secrets:  # said (once per location), never kept: the locations are recorded without them
        places: dict[str, list[str]] = {}
        for where, masked in journal.secrets:
            places.setdefault(masked, []).append(where)
        tree_problems = pl.concat([tree_problems, pl.DataFrame(
            {"rule": "import.secret-in-journal", "srcfile": None,
             "message": [f"the journal's command history holds a credential in {masked} ({', '.join(wheres[:3])}"
                         f"{f' and {len(wheres) - 3} more' if len(wheres) > 3 else ''}); it was not copied into the "
                         "manifest: rotate it (a SAS token or password kept in a file is to be considered known)"
                         for masked, wheres in places.items()]}, schema=PROBLEM_SCHEMA)])
    if not trees:
        raise UsageError(f"the journal {journal.path} records no version (no file rows)", where=journal.path,
                         fix="run chorus-batch on the site directly: there is no history to import")
    _check_labels(trees, journal.path)
    # (the marks are made when they are recorded, after the versions: held through the commits, they took 110 MiB
    # of the 1M-row import's peak; counted here only when the container they are for is to be named)
    central_url = _central(central, journal, lambda: upload_marks(_marked(rows, ended_marks))[0].height, journal.path)
    settings = RunSettings(site=site or ".", db=db, roots=site_roots or {}, patterns=patterns or {},
                           cloud=cloud or CloudSettings(), validate_site=False, max_delete=max_delete)
    roots = _roots(settings, site, trees[-1], journal.path)
    rows = _Packed(rows)  # (the only reference: the frame is let go)

    result = ImportResult(journal=journal.path, journal_schema=journal.schema, db=db, dry_run=dry_run,
                          central=central_url, n_rows=n_rows, replaced=empty)
    manifest = Manifest(target)  # (its real path: the lock, and the temporary file, as every command names them)
    building = importing_path(manifest.path)
    written = f"the manifest was written to {db}, with the journal's {plural(len(trees), 'version')}"  # (what a stop after it says)
    # The manifest's own lock, taken as every command takes it (Manifest.lock: one file, the same checks; the runs it
    # turned away recorded in the new manifest as it lets go): one import at a time, and no run creating it meanwhile.
    # A dry run takes it too: it builds the same temporary file beside --db, which a real import (or the next run)
    # removes as a killed import's leftover (it holds the site's paths).
    published = False
    with manifest.lock(list(argv or [])):
        remove_killed_imports(manifest.path)
        if empty and not _without_history(target):  # (a run committed a version meanwhile)
            raise UsageError(f"{db} received a version while the journal was read; it was left as it is", where=db,
                             fix="pass --db with a new file name")
        try:
            findings = _build(building, journal, trees, rows, ended_marks, roots, settings, central_url, argv or [], result,
                              progress, pl.concat([problems, tree_problems]))
            result.findings = findings
            if dry_run:
                if site is not None:
                    result.status = _check_site(settings.model_copy(update={"db": str(building)}), argv, progress)
                return result
            _publish(building, target, replace_empty=empty)
            published = True
            if empty:
                _remove_replaced_sides(manifest.path)
            _keep_wal(target)
        except BaseException as exc:
            if published:  # the manifest has its name: whatever stopped the import after that, it is there
                with contextlib.suppress(AttributeError, TypeError):
                    exc.outcome = written  # type: ignore[union-attr]
            elif isinstance(exc, ChorusError):  # said about the temporary file, which is gone: say it of the manifest
                exc.where = db if exc.where and building.name in exc.where else exc.where
                exc.outcome = "no manifest was written (the import builds it in a temporary file it removes)"  # type: ignore[attr-defined]
            raise
        finally:
            _remove(building)
            if not target.exists():  # nothing imported: no lock file of a manifest that is not there
                with contextlib.suppress(OSError):
                    Path(f"{manifest.path}.lock").unlink()
    if site is not None:
        try:
            result.status = _check_site(settings, argv, progress)
        except BaseException as exc:  # the manifest is written: "no manifest was written" was said of it
            if getattr(exc, "outcome", None) is None:
                with contextlib.suppress(AttributeError, TypeError):
                    exc.outcome = (f"{written}; only the check of the site against it was cut short: `chorus-batch "  # type: ignore[union-attr]
                                   f"status --site {command_word(mask_url(site))} --db {command_word(db)}` does it")
            raise
    result.elapsed_s = time.monotonic() - started
    return result


def _read(journal_path: str, cloud) -> Journal:
    """The journal: a local file, or a blob (az://container/journal.db) read through a private local copy."""
    if "://" not in journal_path:
        return read_journal(journal_path)
    from ..store.remote import downloaded

    where = mask_url(journal_path)
    parts = urlsplit(journal_path)
    fix = "give a local journal.db, or one in Azure as az://<container>/<path>/journal.db"
    if not _azure(journal_path):
        raise UsageError(f"cannot read a journal from {where}", where=where, fix=fix)
    if not parts.netloc.split("@")[0] or not parts.path.strip("/") or parts.path.endswith("/"):
        raise UsageError(f"the journal {where} does not name a blob (a container or folder is not a journal)",
                         where=f"JOURNAL {where}", fix=fix)
    from ..urls import check_location

    check_location(journal_path, "JOURNAL")  # as every other URL: no credentials, query or '//' in it (exit 2)
    with downloaded(journal_path, cloud, "chorus-upload journal",
                    fix="check the URL ([journal.source] path of chorus-upload's config.toml)") as local:
        journal = read_journal(local, name=where)  # messages name the blob, not the private copy
    journal.path = where
    return journal


def _azure(url: str) -> bool:
    from ..sources.cloud import AZURE_PROTOCOLS, protocol_of

    return protocol_of(url) in AZURE_PROTOCOLS


_LABEL_FIX = ("the labels are chorus-upload's --version values and a version's central folder, so they are not renamed "
              "silently; to start a new history instead, run chorus-batch on the site (the journal stays as it is)")


def _check_labels(trees: list[VersionTree], where: str) -> None:
    from ..commit import _LABEL_RE, LABEL_MAX

    for before, tree in zip([None, *trees], trees):
        if not _LABEL_RE.fullmatch(tree.label):
            raise UsageError(f"upstream version label {tree.label!r} is not a label chorus-batch can keep (letters, "
                             "digits, '.', '_', '-', starting with a letter or digit and not ending in '.'; at most "
                             f"{LABEL_MAX})", where=where,
                             fix=_LABEL_FIX)
        if before is not None and tree.label <= before.label:
            raise UsageError(
                f"upstream version {tree.label!r} was recorded after {before.label!r} but does not sort after it; "
                "chorus-batch orders versions by label", where=where,
                fix=_LABEL_FIX)
    # as `run --version` refuses a label that is an earlier one's in other letter case (v1 after V1): their folders
    # (Parquet snapshots' version=<label>/, a reviewer's download of the central container) are one on Windows and macOS
    first_of: dict[str, str] = {}
    for tree in trees:
        twin = first_of.setdefault(tree.label.casefold(), tree.label)
        if twin != tree.label:
            raise UsageError(
                f"upstream version {tree.label!r} differs from the label of version {twin!r} only in letter case: their "
                "folders (at the central container, in Parquet snapshots) are one folder on a disk that ignores case "
                "(Windows, macOS); nothing was imported", where=where, fix=_LABEL_FIX)


class _Packed:
    """The journal's rows, held compressed (Arrow IPC, LZ4) through the commits and read back whole for each version's
    tree and for the upload marks: held as a frame, they stayed through every version's commit, whose own peak they
    topped (1M-row journal: ~170 MiB as a frame, ~50 in here; the import peaked at 1.13 GiB)."""

    def __init__(self, rows: pl.DataFrame):
        import io

        buffer = io.BytesIO()
        rows.write_ipc(buffer, compression="lz4")
        self._data = buffer.getbuffer()

    def frame(self) -> pl.DataFrame:
        import io

        return pl.read_ipc(io.BytesIO(self._data))


def _marked(rows: pl.DataFrame, ended_marks: pl.DataFrame) -> pl.DataFrame:
    """The rows upload_marks reads: the imported rows and the marked ones that hold no state."""
    return pl.concat([rows, ended_marks.select(rows.columns)])


def _central(central: str | None, journal: Journal, count_marks, where: str) -> str | None:
    """count_marks(): how many upload marks the journal holds (read only when no container is named)."""
    from ..submit.central import central_url

    if central:
        return central_url(central)
    if journal.central and _azure(journal.central):
        return central_url(journal.central)
    if n_marks := count_marks():
        raise UsageError(
            f"the journal holds {n_marks} upload marks, and the central container they are for is not an Azure "
            f"container chorus-batch can name (upstream sent to {journal.central or 'an unrecorded place'})",
            where=where, fix="pass --to az://<container>/ (the site's central container, as `upload` will use it), "
                             "or set [central] to in ./chorus.toml (or in the file --config names)")
    return None


def _roots(settings, site: str | None, last: VersionTree, where: str) -> list[tuple[str, str | None]]:
    """The roots the versions are recorded under: the site's (as `run` records them, checked before the import, not
    after it: a typo in --site costs nothing), else the paths upstream scanned."""
    from ..pipeline import _check_outside_roots, open_roots

    if site is not None:
        # (as a run refuses it, but before the manifest is built there: the check after the import refused it, and
        # left the manifest and its lock inside the site for every run to list)
        _check_outside_roots(settings, Path(settings.db))
        opened = open_roots(settings)
        for root in opened:
            root.source.check()
        return [(root.source.location, root.modality) for root in opened]
    paths = dict(last.roots)
    if not paths:
        raise UsageError("the journal does not record where the site was scanned", where=where,
                         fix="pass --site DIR (the site's root folder as it is now)")
    # A relative path is relative to the folder chorus-upload ran in, which the journal does not hold: recorded as
    # it is, later commands read it from wherever they run (another folder's files, or none).
    relative = sorted({path for path in paths.values() if "://" not in path
                       and not PurePosixPath(path).is_absolute() and not PureWindowsPath(path).is_absolute()})
    if relative:
        raise UsageError(f"the journal records the site by a relative path ({', '.join(map(repr, relative))}): relative "
                         "to the folder chorus-upload ran in, which it does not record", where=where,
                         fix="pass --site DIR (the site's root folder as it is now)")
    # One folder spelled two ways by a Windows site (D:\\Site and d:/Site; its names ignore case): one root, not a
    # modality root beside the site's root naming the same folder.
    def folder(path: str) -> str:
        posix = path.replace("\\", "/")
        posix = posix if posix in ("/", "") or posix.endswith(":/") else posix.rstrip("/")
        return posix.casefold() if PureWindowsPath(path).drive else posix

    spelled = [folder(path) for path in paths.values()]
    default = max(set(spelled), key=spelled.count)
    shown = next(path.replace("\\", "/") for path in paths.values() if folder(path) == default)
    return [(shown, None),
            *((path.replace("\\", "/"), modality) for modality, path in sorted(paths.items()) if folder(path) != default)]


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


def _build(path: Path, journal: Journal, trees: list[VersionTree], rows: _Packed, ended_marks: pl.DataFrame,
           roots: list[tuple[str, str | None]], settings, central: str | None, argv: list[str], result: ImportResult,
           progress, problems: pl.DataFrame) -> pl.DataFrame:
    from ..classify import build_patterns
    from ..commit import commit
    from ..urls import redact
    from ..scan import ScanResult
    from ..store import Manifest

    manifest = Manifest(path)
    manifest.ensure_schema()
    manifest.set_meta({"mtime_unit_ns": str(MTIME_UNIT_NS), "imported_from": f"chorus-upload journal v{journal.schema}"})
    if result.replaced:  # (before the import's own run: begin_run says the killed one as a run after it says it)
        _carry_runs(Path(result.db), path)
        _carry_noted_outcome(Manifest(result.db).run_outcome, manifest.run_outcome)
    run_id = manifest.begin_run(redact(argv), "import", roots[0][0])
    patterns = build_patterns(settings.patterns)
    by_modality = {modality: i for i, (_, modality) in enumerate(roots) if modality is not None}
    root_id = (pl.col("modality").replace_strict(by_modality, default=0, return_dtype=pl.Int64) if by_modality
               else pl.lit(0, pl.Int64))
    previous_label: str | None = None
    mass_removals: list[dict] = []
    for tree in trees:
        files = tree.files(rows.frame())
        progress.stage(f"importing version {tree.label} ({plural(files.height, 'file')})")
        scanned = ScanResult(files=files.select(
            root_id.alias("root_id"), "srcfile", "size", (pl.col("mtime_us") * 1000).alias("mtime_ns"), "md5",
            # hashed by upstream in this run (or these runs): when its bytes were last seen to have this MD5
            (pl.col("valid_us") >= tree.started_us).alias("read"), pl.lit(False).alias("verify"),
            pl.lit("imported").alias("md5_source"), pl.lit(None, pl.String).alias("etag"),
            pl.lit(None, pl.Int64).alias("read_ns"),
        ).cast(SCANNED_SCHEMA), errors=empty_errors(), roots=roots,  # type: ignore[arg-type]
                             scan_started_ns=tree.started_us * 1000, based_on=previous_label)
        # The tree only in `scanned`, which commit empties once it is compared (keep_scan=False, as a run commits):
        # held here, it stayed through the diff and the commit (1M files: ~100 MiB of the import's peak)
        del files
        committed = commit(manifest, scanned, manifest.previous_state(), previous_label=previous_label,
                           patterns=patterns, mode="full", started=_dt(tree.started_us), finished=_dt(tree.finished_us),
                           version_label=tree.label, site=roots[0][0], run_id=run_id, max_delete="all",
                           threads=settings.workers, keep_scan=False)
        # (what the commit's SQLite and ADBC work freed, back to the system before the next version's: the C heap kept
        # it, and each version's commit peaked above the one before, 900 -> 1,024 MiB at 1M files)
        give_back_freed_memory()
        if committed.label is None:
            result.unchanged_updates.append(tree.label)
            continue
        if previous_label is not None and _removes_too_many(committed.counts["removed"], result.versions[-1].n_files,
                                                            settings.max_delete):
            mass_removals.append({"label": tree.label, "previous": previous_label,
                                  "removed": committed.counts["removed"], "of": result.versions[-1].n_files,
                                  "left": committed.n_files})
        result.versions.append(ImportedVersion(label=tree.label, n_files=committed.n_files, counts=committed.counts,
                                               updates=len(tree.updates)))
        previous_label = committed.label
    if not result.versions:
        # Rows there were, but none could be placed: the reasons are findings of a manifest that is not written, so
        # they are said here (else "there is no history" of a journal full of it).
        refused = problems.filter(pl.col("rule").is_in(["import.unusable-row", "import.impossible-interval"]))
        if refused.height:
            first = refused.row(0, named=True)
            raise UsageError(f"no upstream version holds any file: {refused.height} of the journal's {result.n_rows} "
                             f"rows could not be imported, e.g. {first['srcfile'] or '(site)'}: {first['message']}",
                             where=journal.path,
                             fix="a journal chorus-upload wrote holds site-relative paths and valid times: import an "
                                 "unedited copy (its [journal.source] copy, a backup), or run chorus-batch on the site "
                                 "directly")
        raise UsageError("no upstream version holds any file", where=journal.path,
                         fix="run chorus-batch on the site directly: there is no history to import")
    merged = [t for t in trees if len(t.updates) > 1]
    notes = [{"rule": "import.merged-updates", "srcfile": None,
              "message": f"version {t.label} was written by {len(t.updates)} `journal update` runs with the same "
                         "--version: imported as one version (the tree after the last of them)"} for t in merged]
    if result.replaced:
        notes.append({"rule": "import.replaced-empty-manifest", "srcfile": None, "message": (
            f"{result.db} held no version (a first run stopped before its commit): the import "
            + ("would take" if result.dry_run else "took") + " its place; the runs it recorded (`runs`, `run_errors`) "
            + ("would be" if result.dry_run else "are") + " kept in the imported manifest")})
    if journal.unread_columns:  # (a newer chorus-upload's: what they hold is not imported, so said, not passed over)
        table = "journal_v2" if journal.schema == 2 else "journal"
        notes.append({"rule": "import.unread-columns", "srcfile": None,
                      "message": f"the journal's {table} table has columns chorus-batch does not read (a newer "
                                 f"chorus-upload's?): {', '.join(journal.unread_columns)}; what they hold is not "
                                 "imported"})
    if journal.unread_tables:  # (the same for tables: named with their rows, not passed over)
        notes.append({"rule": "import.unread-columns", "srcfile": None,
                      "message": f"the journal has tables chorus-batch does not read (a newer chorus-upload's, or the "
                                 f"other schema's left beside it?): {', '.join(journal.unread_tables)}; what they hold "
                                 "is not imported"})
    # What a run refuses (--max-delete) chorus-upload committed without a word (an unmounted site, a `journal update`
    # run on the wrong folder): imported as recorded, but said, with what it means for the next run when it is the last
    last = result.versions[-1].label
    notes.extend({"rule": "import.mass-removal", "srcfile": None, "message": (
        f"upstream version {cut['label']} removes {cut['removed']:,} of the {cut['of']:,} files of version "
        f"{cut['previous']} ({100 * cut['removed'] / cut['of']:.1f}%" + (": every file" if not cut["left"] else "")
        + f"), more than max_delete {settings.max_delete} allows: `run` would have refused it (was the site unmounted "
        "when chorus-upload ran `journal update`?); imported as upstream recorded it"
        + ("; it is the latest version, so the next run adds back every file the site still holds (hashed again, "
           "and sent again by `upload`)" if cut["label"] == last else ""))} for cut in mass_removals)
    give_back_freed_memory()  # (as after each commit: the marks' group-by topped what the commits left, 1.10 GiB)
    marks, unsent = upload_marks(_marked(rows.frame(), ended_marks))
    problems = pl.concat([problems, unsent])
    unmapped, result.n_marks = _record_marks(manifest, marks, central)
    del marks
    unparseable = manifest.query_frame(
        "SELECT DISTINCT srcfile, message FROM scan_errors WHERE kind = 'unparseable' ORDER BY srcfile",
        schema={"srcfile": pl.String, "message": pl.String})
    findings = pl.concat([
        problems, pl.DataFrame(notes, schema=PROBLEM_SCHEMA), unmapped,
        unparseable.select(rule=pl.lit("import.unparseable-path"), srcfile="srcfile",
                           message=fmt("the path fits no pattern of today's procedures: {}", "message")),
    ]).with_columns(severity=pl.col("rule").replace_strict(_SEVERITY, default="warning")).select(
        "severity", "rule", "srcfile", "message")
    _save_findings(manifest, result.versions[0].label, findings)
    manifest.finish_run(run_id, exit_code=1 if not_notes(findings).height else 0,
                        version=previous_label, n_files=result.versions[-1].n_files, n_errors=findings.height,
                        scan_started_ns=trees[-1].started_us * 1000,
                        message=f"imported {plural(len(result.versions), 'version')} from {journal.path}")
    return findings


def _removes_too_many(removed: int, previous: int, max_delete: str | int) -> bool:
    """Whether a version removing `removed` of the previous version's `previous` files is one `run` refuses
    (commit.guard_removals' share or count)."""
    from ..config import parse_max_delete

    kind, limit = parse_max_delete(max_delete)
    return kind != "all" and previous > 0 and removed > (limit if kind == "count" else previous * limit / 100)


def _record_marks(manifest, marks: pl.DataFrame, central: str | None) -> tuple[pl.DataFrame, int]:
    """The upload marks as ledger rows (state 'imported'): the marks that match no imported file version
    (PROBLEM_SCHEMA), and how many file versions the ledger now holds as sent."""
    from ..store.uploads import UploadLedger

    from ..submit.central import check_names, parse_central
    from ..store.manifest import _arrow_stream, read_frame

    # Each mark's file version, found in SQLite through its path index: the import's whole history read into a frame
    # and joined there on three text columns held 1.5 GiB at once at 1M files (the paths twice, as keys).
    keys = marks.select(_at=pl.int_range(pl.len(), dtype=pl.Int64), srcfile="srcfile", label="label", md5="md5")
    with manifest.adbc() as con, con.cursor() as cur:
        cur.adbc_ingest("_marks", _arrow_stream(keys), mode="create", temporary=True)
        del keys
        ids = read_frame(cur, "SELECT m._at, s.file_id FROM temp._marks m JOIN source_files s ON s.srcfile = m.srcfile "
                              "AND s.version_valid = m.label AND s.md5 = m.md5")
    ids = ids.cast({"_at": pl.Int64, "file_id": pl.Int64}) if ids.width else pl.DataFrame(
        schema={"_at": pl.Int64, "file_id": pl.Int64})
    # A name Azure rewrites or refuses (a backslash, a control character, a part ending in '.', too long) cannot be
    # the blob the mark claims: upstream's blob, if any, has another name. `upload` refuses these names (bad_name).
    no_blob = check_names(pl.col("srcfile"), pl.col("label"), parse_central(central)[1] if central else "")
    # (a left join in the marks' order, a mark matching more than one file version once for each, as they come)
    matched = marks.with_row_index("_at").with_columns(pl.col("_at").cast(pl.Int64)).join(
        ids.sort("_at", "file_id"), on="_at", how="left", maintain_order="left").drop("_at").with_columns(_no_blob=no_blob)
    del ids
    unmapped = matched.filter(pl.col("file_id").is_null() | pl.col("_no_blob").is_not_null()).select(
        rule=pl.lit("import.unmapped-mark"), srcfile="srcfile",
        message=pl.when(pl.col("label").is_null())
        .then(fmt("upload mark {} is on a row without a version label (MD5 {}): not recorded in the uploads "
                        "ledger (`upload` will send this file version again)", "mark", "md5"))
        .when(pl.col("file_id").is_null())
        .then(fmt("upload mark {} of version {} (MD5 {}) matches no file version of the import: not "
                        "recorded in the uploads ledger", "mark", "label", "md5"))
        .otherwise(fmt("upload mark {} of version {} (MD5 {}) names no blob the centre can hold: {}; not recorded "
                       "in the uploads ledger (`upload` refuses the name too: rename the file in the site)",
                       "mark", "label", "md5", "_no_blob")))
    found = matched.filter(pl.col("file_id").is_not_null() & pl.col("_no_blob").is_null()).unique(
        ["label", "file_id"], keep="first", maintain_order=True)
    if central is not None and found.height:
        # A mark is YYYYMMDDHHMMSS (a version label, or the clock time of `file upload`): as an ISO time, else as given.
        when = pl.col("mark").str.strptime(pl.Datetime("us"), "%Y%m%d%H%M%S", strict=False)
        UploadLedger(manifest, central).add(found.select(
            version="label", file_id="file_id",
            destination=pl.concat_str([pl.lit(central + "/"), "label", pl.lit("/"), "srcfile"]),
            state=pl.lit("imported"),
            uploaded_at=pl.coalesce(when.dt.strftime("%Y-%m-%dT%H:%M:%SZ"), pl.col("mark")),
            bytes="size", md5="md5", confirmed_by=pl.lit("journal"), attempts=pl.lit(0, pl.Int64)))
    return unmapped, found.height if central is not None else 0


def _save_findings(manifest, label: str, findings: pl.DataFrame) -> None:
    from ..store.validation import FACTS_SCHEMA, ValidationCache

    if findings.height:  # stored, not marked as a completed check: `validate` still checks the version
        ValidationCache(manifest).save(label, pl.DataFrame(schema=FACTS_SCHEMA), findings, complete=False)


def _without_history(target: Path) -> bool:
    """Whether `target` is a chorus-batch manifest that holds no version and no upload (a first run stopped before its
    commit left it): nothing of a site's history. False for anything else, a file that is not a manifest among them."""
    import sqlite3

    if not target.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"versions", "source_files", "meta"} <= tables:
                return False
            return not any(con.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                           for table in ("versions", "source_files", "uploads", "submissions") if table in tables)
    except sqlite3.Error:
        return False


def _carry_runs(replaced: Path, building: Path) -> None:
    """The runs the manifest without history recorded (a killed first run's `runs` row, its run_errors) copied into
    the manifest that takes its place, with their ids (the import's run comes after them): they went with the file
    it replaced. Called under the manifest's lock, once _without_history(replaced) was checked under it. The columns
    both have (a manifest an older release left may lack some)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(building.resolve().as_uri(), uri=True)) as con:
        con.execute("ATTACH DATABASE ? AS replaced", (f"{replaced.resolve().as_uri()}?mode=ro",))
        with con:
            for table in ("runs", "run_errors"):
                mine = [name for (name,) in con.execute("SELECT name FROM pragma_table_info(?, 'main')", (table,))]
                theirs = {name for (name,) in con.execute("SELECT name FROM pragma_table_info(?, 'replaced')", (table,))}
                columns = ", ".join(f'"{name}"' for name in mine if name in theirs)
                if columns:
                    con.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM replaced.{table}")
        con.execute("DETACH DATABASE replaced")


def _carry_noted_outcome(replaced: Path, building: Path) -> None:
    """The outcome the replaced manifest's killed run noted beside it (<db>.run-outcome: its disk was too full to
    record it in `runs`) copied beside the manifest being built, whose begin_run records it in the carried `runs` row
    (as the next run on the replaced file would have): it was read by no one, and the run said as killed (137)."""
    with contextlib.suppress(OSError):
        noted = replaced.read_bytes()
        if noted.strip():
            write_private(building, noted)


def _remove_replaced_sides(target: Path) -> None:
    """Once the import has taken the place of a manifest without history: the files that manifest's killed run kept
    beside it, which belong to it and not to the import (its hash checkpoint folder, the room it took for its
    outcome, a state cache); they stayed, holding the site's paths, until the next run found them of another
    manifest. Its outcome, if noted, is in the import's `runs` (_carry_noted_outcome)."""
    from ..checkpoint import folder_of, remove

    remove(folder_of(target))
    for suffix in (".run-outcome", ".state.parquet"):
        with contextlib.suppress(OSError):
            Path(f"{target}{suffix}").unlink()


def _publish(building: Path, target: Path, *, replace_empty: bool = False) -> None:
    """Give the finished manifest its name, never over a file that appeared meanwhile; `replace_empty`: over the
    manifest without history that is there (_without_history, checked under the manifest's lock)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(building)) as con:  # fold the WAL into the file: one file to move
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode = DELETE")
    if replace_empty:
        # The old manifest's WAL folded into it and gone first: SQLite would apply a WAL left beside it to the new file.
        with contextlib.closing(sqlite3.connect(target)) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("PRAGMA journal_mode = DELETE")
        os.replace(building, target)
        return
    try:
        os.link(building, target)
    except FileExistsError:
        raise UsageError(f"{target} appeared while the journal was imported; it was left as it is", where=str(target),
                         fix="pass --db with a new file name") from None
    except OSError:  # a file system without hard links
        if target.exists():
            raise UsageError(f"{target} appeared while the journal was imported", where=str(target),
                             fix="pass --db with a new file name") from None
        os.replace(building, target)


def _keep_wal(target: Path) -> None:
    """The published manifest back in WAL mode, as every run keeps it."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(target)) as con:
        con.execute("PRAGMA journal_mode = WAL")


def _remove(building: Path) -> None:
    """The temporary manifest and SQLite's files beside it (not another process's: `importing-12` is no
    file of `importing-1`)."""
    for leftover in building.parent.glob(building.name + "*"):
        if not leftover.name[len(building.name):][:1].isdigit():
            with contextlib.suppress(OSError):
                leftover.unlink()


def _check_site(settings, argv, progress):
    from ..pipeline import status

    try:
        return status(settings, argv=list(argv or []), progress=progress)
    except ChorusError as exc:
        exc.what = f"the journal was imported, but checking it against the site failed: {exc.what}"
        raise
