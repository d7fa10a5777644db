"""`verify`: each file version the ledger says was uploaded, against the central copy.

Without --download the container's listing is compared (one listing per version, not a request per
blob): the blob is there, has the manifest's size, and its Content-MD5 is the manifest's MD5. That
Content-MD5 was set by the uploader, so this proves the upload's bookkeeping, not the bytes. A blob whose etag is not
the one the ledger recorded was changed since by someone else: its metadata or properties set, or its bytes written
again (with a Content-MD5 that then vouches for nothing); the listing cannot tell which, so those blobs alone are read
back: bytes as sent are verified (a metadata change is no problem), others are 'content'. With --download every blob is read back and hashed: the only check of the bytes the centre
holds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from ..errors import ChorusError, ExitCode
from ..faults import pause
from ..frames import fmt
from ..units import plural
from ..sources import cloud as cloud_access
from ..store.uploads import CONFIRMED, REWRITTEN, UploadLedger, require_version
from .central import ARCHIVED, ARCHIVED_FIX, MANIFEST_FOLDER, MANIFEST_NAME, Central, FolderOwner

if TYPE_CHECKING:
    from ..config import CloudSettings
    from ..progress import Progress

PROBLEMS_SCHEMA = {"version": pl.String, "srcfile": pl.String, "verify_state": pl.String, "message": pl.String}
UNLISTED_SCHEMA = {"version": pl.String, "name": pl.String, "size": pl.Int64}
WAITING_SCHEMA = {"version": pl.String, "not_uploaded": pl.Int64, "files": pl.Int64}


@dataclass
class VerifyResult:
    central: str
    method: str  # 'listing' | 'download'
    versions: list[str]
    n_checked: int = 0
    n_copies: int = 0  # manifest copies looked at (a version with no file to send has only its copy to check)
    problems: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=PROBLEMS_SCHEMA))
    elapsed_s: float = 0.0
    not_uploaded: str | None = None  # the --version asked for, of which no file is recorded as uploaded there
    # Blobs under <version>/ that are no file of that version's change set (another tool's, a stale copy): a
    # reviewer at the centre would take them for part of the submission. Not in the ledger (it has no row for them).
    unlisted: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=UNLISTED_SCHEMA))
    # Nothing recorded as uploaded here, but at these containers: a mistyped --to (a nightly verify said
    # "nothing to verify" with exit 0 for ever).
    elsewhere: list[str] = field(default_factory=list)
    # Versions verified of which files are not uploaded yet (an interrupted upload, files not sent): their uploaded
    # files were as recorded, and verify said "all as recorded", exit 0, of a submission the centre holds a part of.
    waiting: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=WAITING_SCHEMA))

    @property
    def exit_code(self) -> ExitCode:
        # A version asked for by name and never uploaded was not verified: that must not look like a success.
        return (ExitCode.FINDINGS if self.problems.height or self.unlisted.height or self.not_uploaded or self.elsewhere
                or self.waiting.height else ExitCode.OK)


def _etag(column: pl.Expr) -> pl.Expr:
    """An etag as the listing gives it and as a reply does (quoted), alike; null stays null (no comparison)."""
    return column.str.strip_chars('"').str.to_lowercase()


def _compare(expected: pl.DataFrame, listing: pl.DataFrame) -> pl.DataFrame:
    """file_id, srcfile, verify_state, message and the blob's etag of each expected file version against the listing;
    vouched: a blob without a Content-MD5 that an earlier --download read back and found right, not written since."""
    joined = expected.join(listing.rename({"name": "srcfile", "size": "blob_size"}), on="srcfile", how="left")
    # (the etag changes with every write of the blob, its bytes or its properties: the same etag is the blob read back)
    vouched = (pl.col("content_md5").is_null()
               & (pl.col("read_etag").str.strip_chars('"') == pl.col("etag").str.strip_chars('"'))).fill_null(False)
    state = (pl.when(pl.col("blob_size").is_null()).then(pl.lit("missing"))
             .when(pl.col("blob_size") != pl.col("size")).then(pl.lit("size"))
             # sent by another tool (chorus-upload, AzCopy of large files): nothing vouches for it but its bytes, read
             # back by a --download (which found them right, and the blob has not been written since: ok)
             .when(pl.col("content_md5").is_null() & ~vouched).then(pl.lit("no_md5"))
             .when(pl.col("content_md5") != pl.col("md5")).then(pl.lit("md5"))
             # written at the centre since the ledger recorded it (its etag changes with every write): its Content-MD5
             # is then the writer's, not the uploader's, and vouches for nothing (a copy that kept it, a tool that set
             # it): the listing said "all as recorded", exit 0, of a blob someone else had rewritten
             .when(_etag(pl.col("recorded_etag")) != _etag(pl.col("etag"))).then(pl.lit(REWRITTEN))
             .otherwise(pl.lit("ok")))
    message = (pl.when(pl.col("verify_state") == "missing").then(pl.lit("not in the central container"))
               .when(pl.col("verify_state") == "size").then(
                   fmt("the central blob has {} bytes, the manifest {}", "blob_size", "size"))
               .when(pl.col("verify_state") == "no_md5").then(pl.lit(
                   "the central blob has the manifest's size but no Content-MD5 (it was sent by another tool): "
                   "only `chorus-batch verify --download` can check its bytes (bytes it finds right count as verified "
                   "until the blob is written again)"))
               .when(pl.col("verify_state") == REWRITTEN).then(pl.lit(
                   "the central blob was changed since the ledger recorded it (its etag is another: its metadata or "
                   "properties were set, or its bytes written again): its size and Content-MD5 are as recorded, and "
                   "its bytes could not be read back to tell which: `chorus-batch verify --download` with a sign-in "
                   "that may read blobs checks them (bytes it finds right count as verified until the blob is "
                   "changed again)"))
               .when(pl.col("verify_state") == "md5").then(
                   fmt("the central blob's Content-MD5 is {}, the manifest's MD5 {}",
                             pl.col("content_md5").fill_null("(none)"), "md5"))
               .otherwise(pl.lit(None)))
    return (joined.with_columns(state.alias("verify_state"), vouched.alias("vouched"))
            .with_columns(message.alias("message"))
            .select("file_id", "srcfile", "verify_state", "message", "etag", "vouched"))


def check_version(ledger: UploadLedger, central: Central, version: str, *, download: bool,
                  workers: int = 8, progress: Progress | None = None) -> tuple[int, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Verify one version's confirmed file versions, record the results in the ledger, and return how
    many were checked, the problems (PROBLEMS_SCHEMA: missing, size, md5, content; conflict: upload found another
    manifest's blob under the name and left it), the blobs under
    <version>/ that are no file of the version's change set (UNLISTED_SCHEMA) and how many of its files are not
    uploaded yet (WAITING_SCHEMA: no row when none is; superseded files can never be, and do not count)."""
    expected = ledger.confirmed(version)
    listing = central.listing(version)
    results = _compare(expected, listing)
    if download:  # (every blob is read back: what an earlier download found vouches for nothing now)
        results = _download_check(central, version, expected, results.with_columns(vouched=pl.lit(False)), workers,
                                  progress)
    elif results.filter(pl.col("verify_state") == REWRITTEN).height:
        # A blob whose etag moved, its size and Content-MD5 as recorded: its metadata or properties were set (a centre's
        # "reviewed" tag), or its bytes written again; the listing cannot tell which. Only these are read back, and
        # content decides: bytes as sent are verified (their new etag recorded, so that this read is not repeated), other
        # bytes are damaged. Every metadata change at the centre was called "rewritten", exit 1, night after night.
        # (A sign-in that may list but not read fails here as --download does: exit 3, nothing of the version recorded.)
        results = _download_check(central, version, expected, results, workers, progress, which=(REWRITTEN,))
    if expected.height:  # (a version of which only files in conflict are recorded: none was verified, nor is it)
        ledger.record_verification(version, results, "download" if download else "listing")
    # Against the whole change set, not the confirmed files: a blob an interrupted upload sent unrecorded, or
    # another manifest's blob of the same name (upload's `conflict`), is a file of this version, said elsewhere.
    plan = ledger.plan(version)
    unlisted = (listing.join(plan.select(pl.col("srcfile").alias("name")), on="name", how="anti")
                .sort("name").select(pl.lit(version).alias("version"), "name", "size"))
    waiting = _waiting(version, plan)
    problems = pl.concat([results.filter(pl.col("verify_state") != "ok").select("srcfile", "verify_state", "message"),
                          ledger.conflicts(version).select("srcfile", pl.lit("conflict").alias("verify_state"), "message")])
    return expected.height, problems.select(pl.lit(version).alias("version"), pl.all()), unlisted, waiting


def _waiting(version: str, plan: pl.DataFrame) -> pl.DataFrame:
    """WAITING_SCHEMA: how many of `version`'s files (its upload plan) are not uploaded yet; no row when none is
    (superseded files can never be, and do not count; files in conflict are problems of their own: no upload sends
    them until the centre's blob is dealt with)."""
    n_waiting = plan.filter(~pl.col("superseded") & ~pl.col("state").is_in([*CONFIRMED, "conflict"]).fill_null(False)).height
    return pl.DataFrame([(version, n_waiting, plan.height)] if n_waiting else [], schema=WAITING_SCHEMA, orient="row")


def _download_check(central: Central, version: str, expected: pl.DataFrame, results: pl.DataFrame, workers: int,
                    progress: Progress | None, which: Sequence[str] = ("ok", "no_md5", REWRITTEN)) -> pl.DataFrame:
    """Read back every blob in `which` (default: that passed the listing check, or has no Content-MD5 to check, or was
    changed since the ledger recorded it) and hash it: 'content' when its bytes differ. `read_back`: found right."""
    if "read_back" not in results.columns:
        results = results.with_columns(read_back=pl.lit(False))
    candidates = (results.filter(pl.col("verify_state").is_in(list(which)))
                  .join(expected.select("file_id", "md5", "size"), on="file_id")
                  .select("file_id", "srcfile", "verify_state", "message", "md5", "size"))
    done = [0, 0]

    def one(row: tuple) -> str | None:
        file_id, srcfile, _, _, md5, size = row
        read = cloud_access.retrying(lambda: central.download_md5(version, srcfile))
        done[0] += 1
        done[1] += size
        if read is None:
            return "missing"
        if read == ARCHIVED:  # (not read: neither right nor damaged; its listing check stands, said as not read back)
            return ARCHIVED
        return "ok" if read == (md5, size) else "content"

    from ..progress import Progress

    try:
        with (progress or Progress(quiet=True)).counter(f"verify {version}", "file", lambda: (done[0], done[1]),
                                                         total=(candidates.height, int(candidates["size"].sum() or 0))):
            with ThreadPoolExecutor(max(1, workers), thread_name_prefix="chorus-verify") as pool:
                states = list(pool.map(one, candidates.iter_rows()))
    except cloud_access.storage_errors() as exc:
        raise central.explain(exc, "read", f"{central.url}/{version}/") from None
    bad = candidates.with_columns(pl.Series("read_state", states, dtype=pl.String)).filter(
        pl.col("read_state").is_not_null()).select("file_id", "read_state")
    return (results.join(bad, on="file_id", how="left")
            .with_columns(pl.coalesce("read_state", "verify_state").alias("verify_state"),
                          (pl.col("read_back") | (pl.col("read_state") == "ok").fill_null(False)).alias("read_back"),
                          pl.when(pl.col("read_state") == "ok").then(pl.lit(None, pl.String))
                          .when(pl.col("read_state") == "content")
                          .then(pl.lit("its bytes, read back, do not have the manifest's MD5"))
                          .when(pl.col("read_state") == "missing").then(pl.lit("gone while it was read back"))
                          .when(pl.col("read_state") == ARCHIVED).then(pl.lit(
                              "in the Archive tier at the centre: its bytes could not be read back (its size and "
                              f"Content-MD5 in the listing were checked); {ARCHIVED_FIX}"))
                          .otherwise(pl.col("message")).alias("message"))
            .drop("read_state"))


def _look_at_copy(central: Central, ledger: UploadLedger, label: str, manifest, *,
                  download: bool = False) -> tuple[bool, FolderOwner | None, str | None]:
    """(there, whose it is when not this manifest's commit of the version, why its bytes are not the copy upload put
    there) of the manifest's copy next to a finished version: read before any result of the version is recorded, so
    that a sign-in that may list but not read (a list-only SAS) fails verify with nothing recorded, not with the files
    called verified and the copy not. By the manifest's id and the version's commit (its fingerprint): a copy of this
    manifest that committed its own version under the label, its copy put there, was taken for this one's."""
    there, foreign = central.copy_holder(label, str(manifest.state_identity()[0]), ledger.version_fingerprint(label))
    # (--download: "the only check of the bytes the centre holds" read every file but the copy the reviewers open)
    return there, foreign, central.copy_damage(label) if there and foreign is None and download else None


def _check_copy(ledger: UploadLedger, label: str, looked: tuple[bool, FolderOwner | None, str | None],
                n_bad: int) -> pl.DataFrame:
    """The manifest's copy that upload put next to a finished version (`looked`: _look_at_copy), still there and still
    this manifest's (the reviewers at the centre read it), and with --download its bytes read back: a problem row
    (PROBLEMS_SCHEMA) when not, and the version is no longer finished, so the next upload puts the copy there again (or
    says whose copy is there instead)."""
    there, foreign, damage = looked
    mine = there and foreign is None
    if mine and damage is None:
        return pl.DataFrame(schema=PROBLEMS_SCHEMA)
    if mine and damage == ARCHIVED:  # not read back: not found damaged either (the version stays finished)
        return pl.DataFrame([{"version": label, "srcfile": f"{MANIFEST_FOLDER}/{MANIFEST_NAME}", "verify_state": ARCHIVED,
                              "message": "the manifest's copy upload put here is in the Archive tier: its bytes could "
                                         f"not be read back; {ARCHIVED_FIX}"}], schema=PROBLEMS_SCHEMA)
    # manifest_copied_at stays (when upload put it there): the next verify looks again, and says so again, until an
    # upload puts the copy back (it cleared it: the second verify said "all as recorded", exit 0, and `versions`
    # "verified", with the copy still gone)
    ledger.submission(label, finished_at=None, n_bad=n_bad + 1)
    if damage is not None:
        state, message = "content", f"the manifest's copy upload put here: {damage}: the next upload puts it there again"
    elif foreign is not None and foreign.twin:
        state = "other"
        message = (f"the manifest's copy upload put here was replaced: the folder {foreign.described()}; this "
                   "manifest's files are checked as recorded, the copy the centre reads is not this commit's")
    else:
        state = "missing" if not there else "other"
        message = (("the manifest's copy upload put here is gone" if not there else
                    "the manifest's copy upload put here was replaced by another manifest's (or another file)")
                   + ": the next upload puts it there again" + ("" if not there else " if that blob is removed"))
    return pl.DataFrame([{"version": label, "srcfile": f"{MANIFEST_FOLDER}/{MANIFEST_NAME}", "verify_state": state,
                          "message": message}], schema=PROBLEMS_SCHEMA)


def _stopped_at(labels: list[str], done: int, n_checked: int, problems: list[pl.DataFrame]) -> str:
    """What the uploads ledger holds when verify failed at labels[done]: the versions before it were verified and
    recorded (as the centre was then), that one and the rest were not."""
    left = labels[done:]
    rest = f"version {left[0]}" + (f" and {plural(len(left) - 1, 'later version')}" if len(left) > 1 else "")
    if not done:
        return f"nothing was recorded in the uploads ledger: {rest} not verified; run the same command again once this is fixed"
    n_bad = sum(frame.height for frame in problems)
    shown = ", ".join(labels[:done][:5]) + (", ..." if done > 5 else "")
    return (f"{plural(done, 'version')} ({shown}; {plural(n_checked, 'file')}, {plural(n_bad, 'problem')}) had been verified "
            f"and recorded in the uploads ledger before this: those results are of the centre as it was then; {rest} "
            "not verified (any earlier result of it stands); run the same command again once this is fixed")


def verify(db: str, to: str, *, cloud: CloudSettings, version: str | None = None, every: bool = False,
           download: bool = False, workers: int = 8, progress: Progress | None = None,
           argv: Sequence[str] = ()) -> VerifyResult:
    """Verify `version` (default: the latest version with uploaded files; every: all of them) at `to`;
    the results go to the ledger."""
    from .upload import _refuse_behind, _working_manifest, container_gone

    started = time.monotonic()
    central = Central(to, cloud, connections=workers + 2)
    try:
        with _working_manifest(db, cloud, argv, read_only=False) as manifest:
            ledger = UploadLedger(manifest, central.url)
            if version is not None:
                require_version(manifest, version)
            uploaded = ledger.versions_uploaded()
            # Only versions with files recorded as uploaded can be verified (nor called verified); and those with files
            # in conflict, which no upload will send: "nothing to verify", exit 0, of a version the centre holds another
            # manifest's files for, and "upload it first" of one whose upload refused to replace them.
            copied = set(ledger.versions_copied())
            known = sorted(set(uploaded) | set(ledger.versions_in_conflict()))
            # A version with no file to send (it only removed files, or all were superseded) is its manifest's copy:
            # `--all` and `--version` check it (verify said "upload it first" of one upload called complete, and never
            # found its copy gone). The default stays the latest version with files uploaded.
            named = sorted(set(known) | copied)
            labels = ([version] if version in named else []) if version is not None else named if every else known[-1:]
            result = VerifyResult(central.url, "download" if download else "listing", labels,
                                  not_uploaded=version if version is not None and not labels else None)
            if not named:
                result.elsewhere = ledger.other_centrals()
            # Also with nothing to verify: a wrong key, account or container said "nothing to verify", exit 0, each
            # night. Also when the ledger records files at other containers (a mistyped --to): a --to whose container
            # does not exist (or may not be listed) fails as upload does, exit 3, naming the container and where the
            # files went (it said only "nothing recorded as uploaded here", exit 1, of a container that is not there).
            try:
                central.check(write=False)
            except ChorusError as exc:
                container_gone(exc, ledger)
                if result.elsewhere:
                    exc.fix = (f"{exc.fix}. The uploads ledger records files uploaded to "
                               f"{', '.join(result.elsewhere)}, none to {central.url}: check --to (or [central] to)")
                raise  # (said with what every verify that fails says: what the uploads ledger recorded before stays)
            # A manifest restored from an older copy said "nothing to verify" (or "all as recorded"), exit 0, while the
            # centre held versions this very manifest uploaded and it no longer has: refused as upload refuses it.
            _refuse_behind(manifest, central, "nothing was verified or recorded")
            problems, unlisted, waiting = [], [], []
            for done, label in enumerate(labels):
                if done:
                    pause("verify-next-version")  # (tests: the container deleted between two versions)
                try:
                    looked = _look_at_copy(central, ledger, label, manifest, download=download) if label in copied else None
                    checked, found, foreign, left = check_version(ledger, central, label, download=download,
                                                                  workers=workers, progress=progress)
                except ChorusError as exc:
                    # The versions verified before stay recorded: true of the centre when they were checked. Said so
                    # (it said only that the container was not found, the earlier versions recorded as ok unmentioned).
                    exc.outcome = _stopped_at(labels, done, result.n_checked, problems)  # type: ignore[attr-defined]
                    container_gone(exc, ledger)
                    raise
                if looked is not None:
                    found = pl.concat([found, _check_copy(ledger, label, looked, found.height)])
                    result.n_copies += 1
                # Blobs under <version>/ the manifest does not list: the version is not complete while they are there
                # (`versions` said "verified" of it, and the next upload "nothing to upload", the blob unmentioned);
                # once they are gone, and all else is as recorded, it is complete again.
                if foreign.height:
                    ledger.unfinished(label)
                elif looked is not None and not found.height and not left.height:
                    ledger.finished_again(label)
                result.n_checked += checked
                problems.append(found)
                unlisted.append(foreign)
                waiting.append(left)
            # Versions none of whose files is recorded as uploaded here (not sent yet; every file stale, missing or with a
            # name Azure would not keep): nothing of them to check, but no part of "all as recorded" either. `--all`
            # named none of them, and the default (the latest version with files uploaded) checked the one before and
            # said "all as recorded", exit 0, with the latest version not at the centre at all. `--all`: every such
            # version (upload sends them too, oldest first); the default: those after the one verified.
            # (`--all` with nothing uploaded at all: every version waits; it said "nothing to verify", exit 0)
            if version is None and (labels or every):
                for label in ledger.versions_not_finished():
                    if label not in labels and (every or label > labels[-1]):
                        waiting.append(_waiting(label, ledger.plan(label)))
            if problems:
                result.problems = pl.concat(problems)
                result.unlisted = pl.concat(unlisted)
            if waiting:
                result.waiting = pl.concat(waiting).sort("version")
            result.elapsed_s = time.monotonic() - started
            return result
    finally:
        central.close()
