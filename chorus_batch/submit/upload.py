"""`upload`: send each version's change set to the central container, record it in the ledger, verify it,
and put the manifest's copy next to it.

  plan      the version's added, replaced and renamed files, less those the ledger has confirmed
            (store/uploads.py); a file replaced or removed since (its bytes are gone) is 'superseded'
  send      many files at once on threads (the work waits on the network): each is stat'ed against its
            manifest row (a file changed since is 'stale', not sent: the next `run` records the change),
            read from its recorded root, and written with its manifest MD5 as Content-MD5 only if the
            bytes read have that MD5 (central.py)
  record    outcomes go to the ledger in batches (LEDGER_ROWS rows or LEDGER_SECONDS, whichever first):
            a killed upload sends again at most the files of the batch it had not written
  finish    a version whose files are all confirmed is checked against the container's listing (each
            blob there, its size and Content-MD5), then the manifest's copy goes to <version>/_manifest/

A failure of the storage itself (unreachable, sign-in, permission, no container) stops the upload at
once: what was confirmed is recorded, and the same command resumes. A failure of one file (unreadable,
changed, gone) is that file's: recorded with the reason, the others go on, the exit code is 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from ..errors import ChorusError, ConfigError, ExitCode, SourceError, UsageError
from ..frames import fmt
from ..fsutil import scratch_folder
from ..faults import pause
from ..sources import cloud as cloud_access
from ..store import Manifest
from ..store.remote import is_remote, remote_manifest
from ..store.uploads import CONFIRMED, CONFLICT_FIX, UploadLedger, require_version
from ..times import iso, utc_now
from ..units import command_word, plural, shown_name
from .central import (MANIFEST_FOLDER, MANIFEST_NAME, Central, Conflict, FileChanged, FolderOwner, ReadFailed, Sent,
                      check_apart, is_archived, other_owner, parse_central, remedy, why_not_sent)

if TYPE_CHECKING:
    from ..config import CloudSettings
    from ..progress import Progress
    from ..sources.base import FileStat, Source

log = logging.getLogger("chorus_batch")

ENV_LEDGER_ROWS = "CHORUS_BATCH_LEDGER_ROWS"  # tests: a smaller batch, to kill an upload between two
LEDGER_ROWS = 256
LEDGER_SECONDS = 2.0
RUN_RECORDS = "the next `chorus-batch run` records"  # (what a file that changed or went waits for)
# Files handed to the sending threads ahead of them, per thread: the ledger's batches are written (a commit that waits
# on the disk) by the thread that hands files out, and with one file ahead of each thread the threads ran dry during
# every write (small files: a third slower than a plain SDK loop)
QUEUE_PER_WORKER = 4
NOT_SENT_SCHEMA = {"srcfile": pl.String, "state": pl.String, "message": pl.String}
# The storage failed as a whole: stop, record what was confirmed, let the same command resume.
_FATAL_KINDS = ("network", "busy", "auth", "permission", "missing", "dns", "unknown_account", "https", "tls")


@dataclass
class VersionUpload:
    version: str
    n_files: int  # the files this version submits (of --modalities, when given)
    n_before: int  # confirmed by an earlier upload: not sent again
    # --modalities: the files of its change set of the other modalities, and of them those not uploaded yet (nor
    # superseded): while any waits, the version is not complete (an upload of some modalities finished it, and the
    # next upload said "nothing to upload" of the files it had left out)
    n_other: int = 0
    n_other_waiting: int = 0
    n_sent: int = 0  # confirmed by this upload
    bytes_sent: int = 0
    n_found: int = 0  # of n_sent: already at the centre with this content (an interrupted upload's), not sent again
    not_sent: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=NOT_SENT_SCHEMA))
    complete: bool = False  # every file of the version is confirmed (or superseded)
    verify_problems: pl.DataFrame | None = None  # after a complete upload: the listing check
    manifest_copy: str | None = None  # where the manifest's copy went
    copy_refused: str | None = None  # why the manifest's copy was not put there (another manifest's is)
    copy_kept: str | None = None  # the copy an earlier upload put there, left as it is (the version was complete)
    # A dry run's: where the upload would put the manifest's copy (it would complete the version); a version that only
    # removes files sends none, and its dry run said "would send 0 files" and nothing of the copy it would put
    copy_would_be: str | None = None
    # Blobs under <version>/ that are no file of its change set (another tool's, an abandoned submission's): a
    # reviewer at the centre takes them for part of it. Only verify said so; upload called the version complete.
    unlisted: pl.DataFrame | None = None
    # Errors validation recorded for the version (findings): sent as it is, and said so (the upload said "complete; all
    # there", exit 0, of a version with a truncated waveform file, and nothing at upload time named it)
    validation_errors: int = 0

    @property
    def n_not_sent(self) -> int:
        return self.not_sent.height


@dataclass
class UploadResult:
    central: str
    versions: list[VersionUpload]
    dry_run: bool
    elapsed_s: float = 0.0
    listed_as: str | None = None  # the sign-in the container was listed with (None: not signed in, nothing to do)
    # --version of a version while versions before it are not completely uploaded there: the centre then holds its
    # changes without those it follows (a change set is against the version before it). Said, not refused.
    earlier_waiting: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        # Superseded files are reported, but cannot be sent by anyone any more: they do not fail the upload.
        if any(v.copy_refused or v.not_sent.filter(pl.col("state") == "conflict").height for v in self.versions):
            return ExitCode.REFUSED  # a blob at the centre holds other content: it stays, this upload is refused
        bad = any(v.not_sent.filter(pl.col("state") != "superseded").height
                  or (v.verify_problems is not None and v.verify_problems.height)
                  or (v.unlisted is not None and v.unlisted.height) for v in self.versions)
        return ExitCode.FINDINGS if bad else ExitCode.OK


# Failures that the same command meets again until someone fixes them (a permission, a sign-in, a name)
_FIX_FIRST = ("auth", "permission", "missing", "dns", "unknown_account", "https", "tls")


def _outcome(n_confirmed: int, n_unrecorded: int = 0, error: BaseException | None = None) -> str:
    unrecorded = (f"; {n_unrecorded} more were sent but could not be recorded (the next upload finds them at the "
                  "centre with the manifest's MD5 and confirms them without sending them again)" if n_unrecorded else "")
    # "run again to resume" after a refused permission sends the site into a loop of the same refusal
    again = "once this is fixed" if getattr(error, "kind", None) in _FIX_FIRST else "to resume"
    return (f"{plural(n_confirmed, 'file')} confirmed by this upload {'is' if n_confirmed == 1 else 'are'} recorded in "
            f"the manifest's uploads ledger{unrecorded}; run the same command again {again} (confirmed files are not "
            "sent again)")


def _waiting(url: str, labels: list[str]) -> str:
    """What a failure before anything was sent leaves: nothing sent or recorded, and what the manifest has waiting."""
    if not labels:
        return (f"nothing was sent or recorded; the manifest has no version waiting to be sent to {url} (each is "
                "recorded as completely uploaded there): the look at the centre that makes sure of it failed")
    shown = ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")
    return (f"nothing was sent or recorded; {plural(len(labels), 'version')} {'waits' if len(labels) == 1 else 'wait'} to be sent to {url} ({shown}): run the "
            "same command again once this is fixed")


def container_gone(error: BaseException, ledger: UploadLedger) -> None:
    """A container that does not exist, where the ledger holds files as uploaded: its fix says they are gone from the
    centre and how to send them again (it said "check the name or create it": created empty, `upload` said "nothing to
    upload" and `verify` found them all missing only when asked)."""
    if getattr(error, "kind", None) != "missing" or not isinstance(error, ChorusError):
        return
    files, versions = ledger.n_confirmed()
    if files:
        error.fix = (f"{error.fix}. The uploads ledger records {plural(files, 'file')} of {plural(versions, 'version')} "
                     f"as uploaded to {ledger.central}: if the container was deleted, they are gone from the centre; "
                     "create it again, run `chorus-batch verify --all` (same --db and --to: it records them as missing), "
                     "then `chorus-batch upload`: it sends them again")


@contextlib.contextmanager
def _working_manifest(db: str, cloud: CloudSettings, argv: Sequence[str], *, read_only: bool) -> Iterator[Manifest]:
    """The manifest to plan from and record into: a local file under the upload lock, or a manifest in
    Azure under its lease (the ledger goes back to it when the command ends)."""
    if is_remote(db):
        # keep_partial: an upload that stops has its ledger written back too (what it confirmed stays confirmed)
        with remote_manifest(db, cloud, list(argv), read_only=read_only, keep_partial=True) as local:
            manifest = Manifest(local)
            manifest.ensure_schema() if not read_only else manifest.require()
            yield manifest
        return
    manifest = Manifest(db)
    manifest.require() if read_only else _upgraded(manifest, argv)
    if read_only:
        yield manifest
        return
    with manifest.lock(list(argv), kind="upload"):
        yield manifest


def _upgraded(manifest: Manifest, argv: Sequence[str]) -> None:
    """An older manifest is migrated first (under the run lock: no run is between versions meanwhile)."""
    try:
        manifest.require()
    except ChorusError:
        if not manifest.path.exists():
            raise
        with manifest.lock(list(argv)):
            manifest.ensure_schema()
        manifest.require()


def upload(db: str, to: str, *, cloud: CloudSettings, version: str | None = None,
           modalities: Sequence[str] | None = None, workers: int = 8, dry_run: bool = False,
           overrides: dict[str | None, str] | None = None, progress: Progress | None = None,
           argv: Sequence[str] = ()) -> UploadResult:
    """Send `version` (default: every version not completely submitted to `to`, oldest first)."""
    from ..progress import Progress

    progress = progress or Progress(quiet=True)
    started = time.monotonic()
    # A dry run signs in too, and lists the container (read-only): what it says about the credentials and the
    # container is then the truth, not a guess. It never writes, so write permission stays untried (it says so).
    central = Central(to, cloud, connections=workers + 8, block_buffers=max(4, workers))
    try:
        url = central.url
        with _working_manifest(db, cloud, argv, read_only=dry_run) as manifest:
            ledger = UploadLedger(manifest, url)
            check_apart(to, [*manifest.roots()["location"].to_list(), *(overrides or {}).values()])
            if version is not None:
                require_version(manifest, version)
            waiting = ledger.versions_not_finished()
            labels = [version] if version is not None else waiting
            result = UploadResult(url, [], dry_run, earlier_waiting=earlier_than(version, waiting))
            try:
                central.check(write=not dry_run)
            except ChorusError as exc:
                # Signed in and looked even with nothing waiting: "nothing to upload" says the centre holds every
                # version, and a manifest older than the centre's (_refuse_behind) shows only there. What waits is said.
                exc.outcome = _waiting(url, labels)  # type: ignore[attr-defined]
                container_gone(exc, ledger)
                raise
            result.listed_as = central.how
            _refuse_behind(manifest, central)
            sources: dict[int, Source] = {}
            checked: set[int] = set()  # the cloud roots checked (once a command)
            prefix = parse_central(to)[1]
            for label in labels:
                try:
                    result.versions.append(_upload_version(manifest, ledger, central, prefix, label, modalities,
                                                           workers, sources, checked, overrides, cloud, progress,
                                                           dry_run=dry_run, finished=label not in waiting))
                except BaseException as exc:
                    # What the ledger holds, over every version this command sent (what cli.main says of it).
                    n = sum(v.n_sent for v in result.versions) + getattr(exc, "n_confirmed", 0)
                    if n or hasattr(exc, "n_confirmed"):
                        with contextlib.suppress(AttributeError):
                            exc.n_confirmed = n  # type: ignore[union-attr]
                            exc.outcome = _outcome(n, getattr(exc, "n_unrecorded", 0), exc)  # type: ignore[union-attr]
                    raise
            result.elapsed_s = time.monotonic() - started
            return result
    finally:
        central.close()




def earlier_than(version: str | None, waiting: list[str]) -> list[str]:
    """The versions not completely uploaded (`waiting`, oldest first) that come before `version` (--version): its change
    set is against them, and the centre would hold it without them. (Labels sort as versions follow, as the ledger
    orders them.)"""
    return [label for label in waiting if version is not None and label < version]


def earlier_note(version: str, earlier: list[str], central: str, *, dry_run: bool = False) -> str:
    """What `upload --version` (and its script) says when versions before it are not completely uploaded."""
    shown = ", ".join(earlier[:5]) + (", ..." if len(earlier) > 5 else "")
    holds = "would hold" if dry_run else "holds"
    return (f"{plural(len(earlier), 'earlier version')} {'is' if len(earlier) == 1 else 'are'} not completely uploaded to "
            f"{central} ({shown}): the centre {holds} the changes of {version} without those of the "
            f"{'version' if len(earlier) == 1 else 'versions'} before it; `chorus-batch upload` without --version sends "
            f"{'it' if len(earlier) == 1 else 'them'}, oldest first")


class ManifestBehind(ChorusError):
    """The centre holds versions this manifest uploaded and no longer has."""

    exit_code = ExitCode.REFUSED


def _refuse_behind(manifest: Manifest, central: Central, outcome: str = "nothing was sent") -> None:
    """Refuse to upload from a manifest older than one that uploaded here (a backup restored, an old copy): it says
    'nothing to upload' while the centre has more, and its next version would fork the centre's history."""
    manifest_id = manifest.state_identity()[0]
    if not manifest_id:
        return
    ahead = central.copies_of(manifest_id, set(manifest.versions()["label"].to_list()))
    if ahead:
        newest = f"{central.url}/{ahead[-1]}/_manifest/manifest.sqlite"
        raise ManifestBehind(
            f"the central container holds {plural(len(ahead), 'version')} this manifest uploaded and no longer has "
            f"({', '.join(ahead[:5])}{', ...' if len(ahead) > 5 else ''}: their manifest copies carry this manifest's "
            "id): this manifest is older than the one that uploaded them (restored from a backup, or a copy from "
            f"before); {outcome}", where=str(manifest.path),
            fix=f"use the newest manifest instead: download {newest} (the manifest as that upload left it, with its "
                "ledger) and give it as --db; a run on this older manifest would commit a version that forks the "
                "centre's history")


def _sources_for(manifest: Manifest, root_ids: list[int | None], sources: dict[int, Source],
                 overrides: dict[str | None, str] | None, cloud: CloudSettings,
                 checked: set[int]) -> dict[int | None, Source]:
    """The roots the files are read from (opened once, those of the files checked): as the manifest records them, or
    moved (--site). Files committed before roots were recorded are read from the only root, if one."""
    from ..validate.run import reopen_roots

    if not sources:
        sources.update(reopen_roots(manifest, overrides=overrides, cloud=cloud))
    # Only the roots this version's files are read from are checked: a root the manifest recorded once and no file to
    # send is under (a [site.roots] folder that moved, one no longer configured) refused the whole upload, named as the
    # site root. A local root each version again (cheap; an unmount meanwhile is said as such, not as files missing),
    # a cloud root once a command: a round-trip each, for every version of a long backlog.
    for root_id in (sources if None in root_ids else set(root_ids) & set(sources)):
        if root_id not in checked:
            source = sources[root_id]
            source.check()
            if not source.parallel_local:
                # A cloud prefix holding only its folder markers passes check(): every file was called "missing: the
                # next run records it as removed", where that run refuses a root that lists nothing (exit 5)
                if hasattr(source, "holds_a_file") and not source.holds_a_file():
                    raise _empty_root_error(source.description, getattr(source, "what", "--site / [site] root"),
                                            manifest.path, cloud=True)
                checked.add(root_id)
    out: dict[int | None, Source] = dict(sources)
    if None in root_ids:
        if len(sources) != 1:
            raise UsageError("some files were committed before the manifest recorded where they are, and it records "
                             f"{len(sources)} roots", where=str(manifest.path),
                             fix="run `chorus-batch run` once (it records the roots), then upload")
        out[None] = next(iter(sources.values()))
    for root_id in set(root_ids):
        source = out.get(root_id)
        if source is not None and source.parallel_local and isinstance(getattr(source, "root", None), str):
            refuse_empty_root(source.root, getattr(source, "what", "--site / [site] root"), manifest.path)
    return out


def refuse_empty_root(root: str, where: str, db: object) -> None:
    """A local root with nothing in it, where files are to be sent from (`upload` and its scripts): an unmounted file
    system (its empty mount point) or a wrong --site. Each file was called missing, "the next run records it as
    removed" (a run refuses that: exit 5), and the upload went on as if the site had removed them."""
    try:
        with os.scandir(root) as entries:
            if next(entries, None) is not None:
                return
    except OSError:
        return  # (said of the root, or of each file, where it is read)
    raise _empty_root_error(root, where, db)


def _empty_root_error(root: str, where: str, db: object, *, cloud: bool = False) -> ConfigError:
    """A root (local folder, or cloud prefix) with no file in it, where the manifest records files to be sent."""
    subject = f"the {'root' if where.startswith('[site.roots]') else 'site root'} {shown_name(root)}"
    if cloud:
        return ConfigError(f"{subject} holds no file (at most folder markers), though the manifest records files there "
                           "that are to be sent: its files were moved or deleted, or the root is not the site; nothing "
                           "of it was sent", where=where,
                           fix=f"put the files back (or give --site the container/prefix the site is in now) and upload "
                               f"again; if the site really removed all its files, `chorus-batch run --db "
                               f"{command_word(str(db))}` records that first (with --max-delete all)")
    return ConfigError(f"{subject} is empty, though the manifest records files there that are "
                       "to be sent: an unmounted file system (its empty mount point), or a --site that is not the site; "
                       "nothing of it was sent", where=where,
                       fix=f"mount the file system (or give --site the folder the site is in now) and upload again; if "
                           f"the site really removed all its files, `chorus-batch run --db {command_word(str(db))}` records "
                           "that first "
                           "(with --max-delete all)")


def sort_plan(ledger: UploadLedger, label: str, modalities: Sequence[str] | None,
              prefix: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The version's plan; its files confirmed before; those nobody can send (file_id, srcfile, state, message,
    damaged: bad_name, superseded, no_md5); those to send. `upload` and `mark-uploaded` (after a script) alike."""
    plan = ledger.plan(label, modalities)
    done = plan.filter(pl.col("state").is_in(CONFIRMED) & ~pl.col("damaged"))
    todo = plan.join(done, on="file_id", how="anti").with_columns(
        why_not_sent(pl.col("srcfile"), label, prefix)
        .alias("bad_name"))
    superseded = todo.filter(pl.col("superseded"))
    # Names the centre would rewrite or refuse: never sent, or the blob would not be where the ledger says.
    bad_name = todo.filter(~pl.col("superseded") & pl.col("bad_name").is_not_null())
    no_md5 = todo.filter(~pl.col("superseded") & pl.col("bad_name").is_null() & pl.col("md5").is_null())
    sendable = todo.filter(~pl.col("superseded") & pl.col("bad_name").is_null() & pl.col("md5").is_not_null())
    immediate = pl.concat([
        bad_name.select("file_id", "srcfile", pl.lit("bad_name").alias("state"),
                        fmt("{}: not sent; {}, then upload again", "bad_name", remedy(pl.col("bad_name")))
                        .alias("message"), "damaged"),
        superseded.select("file_id", "srcfile", pl.lit("superseded").alias("state"),
                          pl.when(pl.col("damaged"))
                          .then(pl.lit("verify found its central blob missing or damaged, and a later version replaced "
                                       "or removed it before it was sent again: its bytes are no longer in the site, so "
                                       "the central blob stays as verify found it (tell the centre)"))
                          .otherwise(pl.lit("replaced, renamed or removed by a later version before it was sent: these "
                                            "bytes are no longer at this path in the site (a file that replaced it, or "
                                            "its new name, goes with that later version)")).alias("message"), "damaged"),
        no_md5.select("file_id", "srcfile", pl.lit("no_md5").alias("state"),
                      pl.lit("the manifest has no MD5 for it (unverifiable cloud file): run with --cloud-md5 download "
                             "to record one").alias("message"), "damaged"),
    ])
    return plan, done, immediate, sendable


def record_unsendable(ledger: UploadLedger, central: Central, label: str, immediate: pl.DataFrame) -> None:
    """Record the files of `label` nobody can send (sort_plan's third frame) with why."""
    # A damaged blob whose bytes are gone from the site can never be sent again: it is no longer held as
    # confirmed (else its version would wait for a resend for ever); verify's finding stays on its row.
    # (Its row keeps what the upload and verify recorded: only its state and why change.)
    given_up = immediate.filter((pl.col("state") == "superseded") & pl.col("damaged"))
    ledger.give_up(label, given_up.select("file_id", pl.col("message").alias("last_error")))
    to_record = immediate.join(given_up, on="file_id", how="anti")
    if to_record.height:
        ledger.record([{"version": label, "file_id": file_id, "destination": central.destination(label, srcfile),
                        "state": state, "last_error": message, "attempts": 0}
                       for file_id, srcfile, state, message in
                       to_record.select("file_id", "srcfile", "state", "message").iter_rows()])


def _upload_version(manifest: Manifest, ledger: UploadLedger, central: Central, prefix: str, label: str,
                    modalities: Sequence[str] | None, workers: int, sources: dict[int, Source], checked: set[int],
                    overrides: dict[str | None, str] | None, cloud: CloudSettings, progress: Progress, *,
                    dry_run: bool = False, finished: bool = False) -> VersionUpload:
    """finished: the version is recorded as completely uploaded (`upload --version` of it: its listing is checked
    again, and the manifest's copy is left as it is)."""
    plan, done, immediate, sendable = sort_plan(ledger, label, modalities, prefix)
    outcome = VersionUpload(label, plan.height, done.height, validation_errors=manifest.query_frame(
        "SELECT count(*) AS n FROM findings WHERE version = ? AND severity = 'error'", (label,),
        schema={"n": pl.Int64}).item())
    if modalities:
        other = ledger.plan(label).join(plan, on="file_id", how="anti")
        outcome.n_other = other.height
        outcome.n_other_waiting = other.filter(
            ~pl.col("superseded") & ~(pl.col("state").is_in(CONFIRMED).fill_null(False) & ~pl.col("damaged"))).height
    if dry_run:  # what would be sent; the roots it would be read from are opened and checked (read-only) as upload does
        outcome.not_sent = immediate.select(list(NOT_SENT_SCHEMA))
        if sendable.height:
            readers = _sources_for(manifest, sendable["root_id"].unique().to_list(), sources, overrides, cloud,
                                   checked)
            # The look the upload takes before sending (a read): a dry run said "would send N" into a folder holding
            # another manifest's submission, where the upload adds nothing
            owner = other_owner(central.folder_owner(label, "look at"), str(manifest.state_identity()[0]),
                                ledger.version_fingerprint(label))
            if owner is not None:
                outcome.copy_refused = (
                    f"{label}/ at the centre {owner.described()}: nothing would be added there: the "
                    f"{plural(sendable.height, 'file')} not sent yet would be confirmed where a blob holds the same "
                    f"content and recorded as conflict otherwise (exit 5); {CONFLICT_FIX}")
                return outcome
            left_out = _dry_look(readers, sendable, workers)
            outcome.not_sent = pl.concat([outcome.not_sent, left_out])
            sendable = sendable.filter(~pl.col("srcfile").is_in(left_out["srcfile"].implode()))
        outcome.n_sent = sendable.height
        outcome.bytes_sent = int(sendable["size"].sum() or 0)
        # As _finish_version: a version the upload would complete gets the manifest's copy, unless it was finished
        # before with this manifest's copy there (kept). (Its listing check is not made: the files are not there yet.)
        would_complete = (outcome.not_sent.filter(pl.col("state") != "superseded").height == 0
                          and outcome.n_other_waiting == 0)
        if would_complete:
            # (the upload's one check of the copy: by the manifest's id and the version's commit)
            there, foreign = central.copy_holder(label, str(manifest.state_identity()[0]),
                                                 ledger.version_fingerprint(label), "look at")
            if foreign is not None:  # what copy_manifest then refuses (put_manifest: Conflict, exit 5)
                outcome.copy_refused = (f"{central.url}/{label}/ {foreign.described()}: the manifest's copy would not "
                                        f"be put there (exit 5); {CONFLICT_FIX}")
            elif finished and there:  # (the dry run said nothing of it, where the upload says "left as it is")
                outcome.copy_kept = f"{central.url}/{label}/{MANIFEST_FOLDER}/{MANIFEST_NAME}"
            else:
                outcome.copy_would_be = f"{central.url}/{label}/{MANIFEST_FOLDER}/{MANIFEST_NAME}"
        return outcome
    ledger.start(label)
    record_unsendable(ledger, central, label, immediate)
    readers = _sources_for(manifest, sendable["root_id"].unique().to_list(), sources, overrides, cloud,
                           checked) if sendable.height else {}
    # A folder whose manifest copy (or, while it is uploaded, whose claim) is another manifest's holds that manifest's
    # submission (the same label, reused): its blobs with this content are confirmed as they are, and nothing is added
    # to it. A folder nobody holds is claimed before the first file goes there: another manifest uploading the same
    # label meanwhile mixed its files into this one's unfinished submission.
    # (by the manifest's id and the version's commit: two copies of one manifest, each with its own commit of the label)
    mine, fingerprint = str(manifest.state_identity()[0]), ledger.version_fingerprint(label)
    try:
        owner = central.folder_owner(label, "upload to", claim_as=mine,
                                     fingerprint=fingerprint) if sendable.height else None
    except BaseException as exc:  # (nothing of this version was sent: what cli.main says of the ledger)
        with contextlib.suppress(AttributeError):
            exc.n_confirmed = 0  # type: ignore[union-attr]
        raise
    foreign = other_owner(owner, mine, fingerprint)
    sent, not_sent = _send(ledger, central, label, sendable, readers, workers, progress, foreign=foreign)
    outcome.n_sent, outcome.bytes_sent, outcome.n_found = sent
    not_sent = _superseded_meanwhile(manifest, ledger, central, label, sendable, not_sent)
    try:
        _finish_version(manifest, ledger, central, label, outcome, not_sent, immediate, finished=finished)
    except BaseException as exc:  # (the listing check or the manifest's copy failed: what was sent is recorded)
        with contextlib.suppress(AttributeError):
            exc.n_confirmed = outcome.n_sent  # type: ignore[union-attr]
        raise
    return outcome


def _superseded_meanwhile(manifest: Manifest, ledger: UploadLedger, central: Central, label: str,
                          sendable: pl.DataFrame, not_sent: pl.DataFrame) -> pl.DataFrame:
    """Files found changed or gone while a run committed beside this upload a version that replaced or removed them:
    superseded, as the next upload would call them. They were said to be 'stale' ("a chorus-batch run records the
    change": it had) and the version incomplete (exit 1) until the next upload called them superseded."""
    gone = not_sent.filter(pl.col("state").is_in(["stale", "missing"]))
    if gone.height == 0:
        return not_sent
    ids = sendable.select("file_id", "srcfile").join(gone.select("srcfile"), on="srcfile")
    ended: set[int] = set()
    for chunk in [ids["file_id"].to_list()[i:i + 500] for i in range(0, ids.height, 500)]:
        ended.update(manifest.query_frame(
            f"SELECT file_id FROM source_files WHERE version_invalid IS NOT NULL AND file_id IN ({', '.join('?' * len(chunk))})",
            tuple(chunk), schema={"file_id": pl.Int64})["file_id"].to_list())
    if not ended:
        return not_sent
    why = ("replaced, renamed or removed by a later version (a run committed it while this upload ran) before it was "
           "sent: these bytes are no longer at this path in the site (a file that replaced it, or its new name, goes "
           "with that later version)")
    superseded = ids.filter(pl.col("file_id").is_in(list(ended)))
    ledger.record([{"version": label, "file_id": file_id, "destination": central.destination(label, srcfile),
                    "state": "superseded", "last_error": why, "attempts": 0}
                   for file_id, srcfile in superseded.iter_rows()])
    names = set(superseded["srcfile"].to_list())
    return not_sent.with_columns(
        pl.when(pl.col("srcfile").is_in(list(names))).then(pl.lit("superseded")).otherwise(pl.col("state")).alias("state"),
        pl.when(pl.col("srcfile").is_in(list(names))).then(pl.lit(why)).otherwise(pl.col("message")).alias("message"))


def _finish_version(manifest: Manifest, ledger: UploadLedger, central: Central, label: str, outcome: VersionUpload,
                    not_sent: pl.DataFrame, immediate: pl.DataFrame, *, finished: bool = False) -> None:
    """Check a version whose files are all confirmed against the listing, then copy the manifest next to it (unless
    it was `finished` before and this manifest's copy is there: it stays)."""
    outcome.not_sent = pl.concat([immediate.select(list(NOT_SENT_SCHEMA)), not_sent])
    # Complete: nothing is left that could still be sent (superseded files never can), of --modalities or not.
    outcome.complete = (outcome.not_sent.filter(pl.col("state") != "superseded").height == 0
                        and outcome.n_other_waiting == 0)
    if outcome.complete:
        from .verify import check_version

        _, problems, unlisted, _ = check_version(ledger, central, label, download=False)
        outcome.verify_problems, outcome.unlisted = problems, unlisted
        # Complete is what the ledger records as complete (--json said "complete": true of a version whose listing
        # check failed or whose folder holds blobs the manifest does not list, both left unfinished, exit 1)
        outcome.complete = problems.height == 0 and unlisted.height == 0
        if problems.height == 0:
            # The copy the centre read as this submission's stays: `upload --version` of a complete version put the
            # manifest as it is now (later versions, another ledger) over it, with nothing sent.
            # (by the manifest's id and the version's commit: a copy of this manifest that committed its own
            # version under the label, its copy there, was "this manifest's copy, left as it is", exit 0; now
            # copy_manifest refuses it, as it refuses any copy not this commit's: exit 5)
            there, foreign = central.copy_holder(label, str(manifest.state_identity()[0]),
                                                 ledger.version_fingerprint(label), "look at") if finished else (False, None)
            if there and foreign is None:
                outcome.copy_kept = f"{central.url}/{label}/{MANIFEST_FOLDER}/{MANIFEST_NAME}"
                if unlisted.height:  # (it said "not complete" of them, and left the version recorded as complete:
                    ledger.unfinished(label)  # the next upload said "nothing to upload", the blobs unmentioned)
                return
            try:
                outcome.manifest_copy = copy_manifest(manifest, central, label)
            except Conflict as exc:  # not finished: the next upload says so again
                outcome.copy_refused = f"{exc}; {CONFLICT_FIX}"
                outcome.complete = False
                return
            now = iso(utc_now())
            # The copy tells the centre which blobs are the submission; with blobs of others beside it the version
            # is not finished: each upload lists its folder again and says so until they are gone (never deleted here).
            # (finished_at is cleared too: a version finished before and sent on after verify found a blob damaged
            # stayed "completely uploaded", and the next upload said "nothing to upload" with the others' blobs there)
            ledger.submission(label, manifest_copied_at=now, finished_at=None if unlisted.height else now)


def _send(ledger: UploadLedger, central: Central, label: str, files: pl.DataFrame, readers: dict[int | None, Source],
          workers: int, progress: Progress, *, foreign: FolderOwner | None = None) -> tuple[tuple[int, int, int], pl.DataFrame]:
    """Send `files` on `workers` threads; outcomes are written to the ledger in batches (`foreign`: the folder is
    another manifest's submission: blobs are confirmed as they are, never written). Returns
    ((files confirmed, bytes sent, files of them found at the centre already), the files not sent with why)."""
    batch_rows = int(os.environ.get(ENV_LEDGER_ROWS) or LEDGER_ROWS)
    pending: list[dict] = []
    not_sent: list[tuple[str, str, str]] = []
    counts = [0, 0, 0]  # confirmed files, bytes sent, confirmed as found there
    recorded = [0]  # confirmed files written to the ledger (what a stopped upload may say it recorded)
    # What the progress lines count against the plan's total: every file settled and its size, found at the centre or
    # not sent too (counting sent bytes alone, a resumed upload that found blobs ended "35/35 files, 1.2 MiB/1.3 MiB")
    settled = [0, 0]
    lock = threading.Lock()
    last_flush = time.monotonic()

    def record_pending() -> None:
        ledger.record(pending)
        recorded[0] += sum(row["state"] == "uploaded" for row in pending)
        pending.clear()

    def flush() -> None:
        nonlocal last_flush
        record_pending()
        last_flush = time.monotonic()
        pause("upload")

    def settle(row: dict, future: Future) -> None:
        try:
            result = future.result()
        except _Fatal as fatal:
            raise fatal.error from None
        with lock:
            settled[1] += int(row["size"] or 0)
            central.forget_staged(label, row["srcfile"])  # (its blocks were counted while it was sent)
        entry = {"version": label, "file_id": row["file_id"], "destination": central.destination(label, row["srcfile"]),
                 "attempts": 1, "uploaded_at": iso(utc_now())}
        if isinstance(result, Sent):
            entry.update(state="uploaded", bytes=result.bytes, md5=result.md5, etag=result.etag,
                         confirmed_by=result.confirmed_by, last_error=None)
            if result.read_back:  # a blob without a Content-MD5, its bytes read and found right: what verify --download
                # records (else the listing check called it no_md5 and the version never finished without a download)
                entry.update(verify_state="ok", verify_method="download", verified_at=entry["uploaded_at"])
            with lock:
                counts[0] += 1
                settled[0] += 1
                if result.confirmed_by == "found":  # (its bytes were not sent: the blob was there)
                    counts[2] += 1
                else:
                    counts[1] += result.bytes
        else:
            state, message = result
            entry.update(state=state, last_error=message, uploaded_at=None)
            with lock:
                not_sent.append((row["srcfile"], state, message))
                settled[0] += 1
        pending.append(entry)

    rows = iter(files.iter_rows(named=True))
    total = (files.height, int(files["size"].sum() or 0))
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="chorus-upload")
    in_flight: dict[Future, dict] = {}
    done: queue.SimpleQueue[Future] = queue.SimpleQueue()  # futures as they finish (no scan of all in flight)
    depth = QUEUE_PER_WORKER * max(1, workers)  # a bounded queue: the plan may hold millions of rows

    def poll() -> tuple[int, int]:
        # A large file's blocks count as they are taken, not only once it settles: a 300 MiB file's send said
        # "0/1 file, 0 files/s" until it ended (bytes only, not files; under the lock: never counted twice)
        with lock:
            return settled[0], min(total[1], settled[1] + central.staged_bytes())

    def detail() -> str:
        # What the files counted are, in the summary's words: the progress counted files found at the centre and files
        # not sent among its "35/35 files", the summary then said "sent 30 files" (the two disagreed on a resumed upload)
        with lock:
            return settled_words(counts[0] - counts[2], counts[2], settled[0] - counts[0])

    try:
        with progress.counter(f"upload {label}", "file", poll, total=total, detail=detail):
            while True:
                while len(in_flight) < depth:
                    row = next(rows, None)
                    if row is None:
                        break
                    future = pool.submit(_send_one, central, readers, label, row, foreign)
                    in_flight[future] = row
                    future.add_done_callback(done.put)
                if not in_flight:
                    break
                # (after the queue is topped up: the threads go on sending while the batch is written)
                if len(pending) >= batch_rows or (pending and time.monotonic() - last_flush >= LEDGER_SECONDS):
                    flush()
                finished = []
                with contextlib.suppress(queue.Empty):
                    finished.append(done.get(timeout=0.5))
                    while True:
                        finished.append(done.get_nowait())
                for future in finished:
                    settle(in_flight.pop(future), future)
            flush()
    except BaseException as exc:
        # Stop sending; what finished is recorded, then the error (or signal) goes on with the truth about it.
        pool.shutdown(wait=False, cancel_futures=True)
        for future in list(in_flight):
            if future.done() and not future.cancelled():
                with contextlib.suppress(BaseException):
                    settle(in_flight.pop(future), future)
        with contextlib.suppress(ChorusError, sqlite3.Error):
            record_pending()
        with contextlib.suppress(AttributeError):  # what cli.main says about it: what the ledger holds
            exc.outcome = _outcome(recorded[0], counts[0] - recorded[0], exc)  # type: ignore[union-attr]
            exc.n_confirmed, exc.n_unrecorded = recorded[0], counts[0] - recorded[0]  # type: ignore[union-attr]
        raise
    pool.shutdown(wait=True)
    frame = pl.DataFrame(not_sent, schema=NOT_SENT_SCHEMA, orient="row")
    return (counts[0], counts[1], counts[2]), frame




def settled_words(sent: int, found: int, skipped: int) -> str:
    """The files an upload settled, as its progress lines and its summary both say them."""
    return f"{sent:,} sent, {found:,} already at the centre, {skipped:,} skipped"


class _Fatal(Exception):
    def __init__(self, error: SourceError):
        super().__init__(str(error))
        self.error = error


def _look_up(readers: dict[int | None, Source], row: dict) -> tuple[Source, FileStat] | tuple[str, str]:
    """The file's root and stat when it is as its manifest row says (by size, and mtime on local roots); else
    (state, why) it is not sent. _Fatal when the storage fails. (A dry run says the same, without reading.)"""
    srcfile = row["srcfile"]
    source = readers.get(row["root_id"]) or readers.get(None)
    if source is None:
        return "missing", f"its root (root_id {row['root_id']}) is not recorded in the manifest"
    try:
        stat = source.stat(srcfile)
    except FileNotFoundError:
        return "missing", f"not found in {source.description}: {RUN_RECORDS} it as removed (an upload does not)"
    except OSError as exc:
        return "failed", f"cannot read it in {source.description}: {exc.strerror or exc}"
    except SourceError as exc:
        raise _Fatal(exc) from None
    if stat.archived:  # (known from its properties: a dry run says it too, and no read is tried)
        return "failed", _archived(source)
    # The mtime is compared where it is the file system's own (local roots); the MD5 check guards the rest.
    if stat.size != row["size"] or (source.parallel_local and stat.mtime_ns != row["mtime_ns"]):
        # Said of `chorus-batch run`, not "the next run": a site whose cron runs `upload` alone took that for the
        # next upload, which records nothing of the site and found the file stale night after night.
        return "stale", ("changed since the version recorded it (size or modification time differ): not sent; "
                         f"{RUN_RECORDS} the change (an upload does not), and the upload after it sends it with that "
                         "run's version")
    return source, stat


def _archived(source: Source) -> str:
    return (f"cannot read it in {source.description}: the object is in an archive tier (Azure Archive, S3 Glacier or "
            "Deep Archive), whose bytes cannot be read until it is brought back: not sent, and the version stays "
            "incomplete until it is; bring it back (Azure: set its tier to Hot or Cool; S3: restore it; that takes "
            "hours), then upload again")


def _dry_look(readers: dict[int | None, Source], files: pl.DataFrame, workers: int) -> pl.DataFrame:
    """NOT_SENT_SCHEMA rows of the files an upload would not send as they are now (missing, changed, unreadable):
    a dry run said 'would send' them all, exit 0, where the upload then left them out, exit 1."""
    def one(row: dict) -> tuple[str, str, str] | None:
        looked = _look_up(readers, row)
        return (row["srcfile"], *looked) if isinstance(looked[0], str) else None

    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="chorus-dry-run") as pool:
            rows = [r for chunk in files.iter_slices(10_000)  # (bounded: a plan may hold millions of rows)
                    for r in pool.map(one, chunk.iter_rows(named=True)) if r is not None]
    except _Fatal as fatal:
        raise fatal.error from None
    return pl.DataFrame(rows, schema=NOT_SENT_SCHEMA, orient="row")


def _send_one(central: Central, readers: dict[int | None, Source], label: str, row: dict,
              foreign: FolderOwner | None = None) -> Sent | tuple[str, str]:
    """Send one file version: a Sent, or (state, why) when it is not sent; _Fatal when the storage fails."""
    srcfile = row["srcfile"]
    looked = _look_up(readers, row)
    if isinstance(looked[0], str):  # (state, why): not sent
        return looked  # type: ignore[return-value]
    source, stat = looked
    try:
        if foreign is not None:
            return central.confirm(label, srcfile, row["size"], row["md5"], foreign)
        return central.put(label, srcfile, lambda: source.open(srcfile), row["size"], row["md5"], row["replace_etag"])
    except Conflict as exc:
        return "conflict", f"{exc}; {CONFLICT_FIX}"
    except FileChanged as exc:
        if stat.etag and row["source_etag"] and stat.etag.strip('"').lower() == row["source_etag"].strip('"').lower():
            # Not written since (same etag): the MD5 recorded was the storage's own (Content-MD5), and it is wrong.
            # "The next run records the change" would not be true: the run sees no change.
            return "failed", (f"{exc}, though it was not written since its version recorded it (same etag): the MD5 "
                              "recorded is the one the storage holds for it (its Content-MD5), and that is wrong (set "
                              "by a client or copy tool); not sent; correct the object's Content-MD5 (or upload it "
                              "again with its MD5), or run with --rehash: the next run then records the MD5 of its bytes")
        if source.parallel_local:
            # Size and mtime were as recorded (checked above): a plain run sees no change either, and the version
            # would wait for ever. Only reading the bytes again records them.
            return "stale", (f"changed in place since the version recorded it: {exc}, though its size and modification "
                             "time are as recorded (rewritten by a tool that keeps modification times, or damaged on "
                             "disk): not sent; a plain run does not see this change: restore the file from a backup, "
                             "or run `chorus-batch run --rehash` (it records its bytes as they are now, and this "
                             "version's file as replaced)")
        return "stale", f"changed since the version recorded it: {exc}; not sent"
    except ReadFailed as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return "missing", f"not found in {source.description}: {RUN_RECORDS} it as removed (an upload does not)"
        if isinstance(exc.__cause__, cloud_access.Archived):
            # (the run's word, "nothing to do if it is meant to stay archived", is not true here: the version waits)
            return "failed", _archived(source)
        return "failed", f"cannot read it in {source.description}: {exc}"
    except SourceError as exc:  # a cloud root that failed as a whole
        raise _Fatal(exc) from None
    except cloud_access.storage_errors() as exc:  # the central container's reply
        if is_archived(exc):  # (a blob there without a Content-MD5, whose bytes were to be read back to confirm it)
            return "failed", (f"{central.destination(label, srcfile)} is there without a Content-MD5 and in the Archive "
                              "tier: its bytes cannot be read back to confirm that it is this file (it is not replaced); "
                              "rehydrate it at the centre (set its access tier to Hot or Cool; that takes hours), then "
                              "upload again")
        if cloud_access.classify(exc) in _FATAL_KINDS:
            raise _Fatal(central.explain(exc, "upload to")) from None
        return "failed", cloud_access.scrub(f"the central container refused it: {type(exc).__name__}: {exc}")[:300]


def copy_manifest(manifest: Manifest, central: Central, label: str) -> str:
    """A consistent copy of the manifest (SQLite's online backup), owner-only while it exists, sent next
    to the version; returns its URL."""
    from ..store.manifest import connect_sqlite3

    with scratch_folder(".chorus-copy-", manifest.path.parent) as folder:
        copy = folder / "manifest.sqlite"
        source = connect_sqlite3(manifest.path, str(manifest.path))
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        try:
            return central.put_manifest(label, copy, str(manifest.state_identity()[0]),
                                        UploadLedger(manifest, central.url).version_fingerprint(label))
        except cloud_access.storage_errors() as exc:
            raise central.explain(exc, "upload to", f"{central.url}/{label}/_manifest/") from None

