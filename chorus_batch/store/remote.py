"""A manifest in Azure Blob Storage: `--db az://container/path/manifest.sqlite` (or abfs://).

SQLite needs a local file, so a run works on a local working copy and uploads it back:

  1. sign in as cloud roots do (sources/cloud.py: `azure_sign_in`, `sync_blob_service_client`);
  2. take a blob lease on a sibling lock blob, `<manifest>.lock` (empty; created when missing). The
     lease is finite (CHORUS_BATCH_LEASE_S, default 60 s, Azure allows 15-60) and renewed by a
     background thread every third of that while the run lives: a killed run's lease expires within
     a minute. Who holds it (host, user, pid, start, the command with secrets masked) is written in
     the lock blob's metadata, so a refused run and `unlock` can name the holder. A sibling (not the
     manifest blob itself) so that the manifest blob changes only when a run uploads a result: a
     failed or refused run leaves it byte- and etag-identical, no placeholder stands where a
     manifest is expected, and other machines' working copies stay fresh;
  3. bring the working copy up to date: it is downloaded again unless the manifest blob's etag is
     the one recorded when this copy was last downloaded or uploaded (and the copy was not touched
     since);
  4. run the pipeline on the working copy (under its local file lock, as for any manifest);
  5. after a successful run (a version committed, or none needed: the `runs` log row is kept too),
     or a commit whose follow-up failed (AfterCommitError), checkpoint the WAL, renew the lease once
     more (a lost lease: no upload), and upload the copy with Content-MD5 and If-Match on the etag
     this run downloaded (If-None-Match: * for a new manifest): whatever another writer made in the
     meantime is never overwritten, the upload fails instead. On any failure or signal nothing is
     uploaded and the remote manifest stays as it was; the lease is released (or, if the process
     was killed, it expires).

The working copy lives in a private (0700) folder that is stable per manifest URL, so the state
cache beside it (`<db>.state.parquet`) is reused across runs:
  $CHORUS_BATCH_CACHE_DIR, else $XDG_CACHE_HOME/chorus-batch, else ~/.cache/chorus-batch,
  then manifests/<hash of account, container and blob name>/<blob's file name>.
Read-only commands use a separate copy (read/<name> in that folder), downloaded without a lease
when its etag is out of date, so that they never disturb a run's working copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from ..faults import pause
from ..errors import AfterCommitError, ChorusError, ExitCode, ManifestError, ManifestLocked, Stopped, UsageError
from ..sources.cloud import azure_sign_in, explain, retrying, storage_errors, sync_blob_service_client
from ..units import plural
from ..urls import is_remote, mask_url  # noqa: F401  (is_remote: re-exported)
from ..times import iso, utc_now
from .lock import command_of, user_name

if TYPE_CHECKING:
    from ..config import CloudSettings

log = logging.getLogger("chorus_batch")
T = TypeVar("T")

ENV_LEASE_S = "CHORUS_BATCH_LEASE_S"
ENV_CACHE_DIR = "CHORUS_BATCH_CACHE_DIR"
LEASE_S = 60  # Azure: 15 to 60 seconds (or infinite, which a killed run would hold forever)
_META = "chorus_"  # prefix of the holder's metadata keys
_LOST_CODES = {"LeaseIdMismatchWithBlobOperation", "LeaseIdMismatchWithLeaseOperation", "LeaseLost",
               "LeaseNotPresentWithBlobOperation", "LeaseNotPresentWithLeaseOperation", "LeaseIdMissing",
               "ConditionNotMet", "LeaseIsBrokenAndCannotBeRenewed", "LeaseExpired"}


def lease_seconds() -> int:
    try:
        value = int(float(os.environ.get(ENV_LEASE_S, LEASE_S)))
    except ValueError:
        value = LEASE_S
    return min(60, max(15, value))


def _split(url: str) -> tuple[str, str]:
    """(container, blob name) of az://container/path/name or abfs://container[@account...]/path/name."""
    parts = urlsplit(url)
    container = (parts.netloc or "").split("@")[0]
    # Taken as written, as --site and --to take az:// and s3:// URLs (fsspec, the SDK): a '%' is a character of the
    # blob's name, never an escape. (It was decoded here only: --db az://c/my%20m.sqlite was the blob 'my m.sqlite'.)
    name = parts.path.lstrip("/")  # (a trailing '/' names a folder: it was stripped, and a blob made of the folder)
    if not container or not name or name.endswith("/"):
        raise UsageError(f"--db {mask_url(url)} does not name a blob",
                         where="--db / [manifest] db",
                         fix="give the manifest blob's URL: az://CONTAINER/path/manifest.sqlite")
    return container, name


def cache_base() -> Path:
    from ..urls import expand_home

    fix = f"set {ENV_CACHE_DIR} to a folder of this user's (a full path)"
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        from ..config_file import check_cache_dir

        check_cache_dir(explicit)
        return Path(expand_home(explicit, ENV_CACHE_DIR, fix))
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and not os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and is ignored
        log.warning(f"XDG_CACHE_HOME={xdg!r} is not an absolute path; it is ignored (as the XDG Base Directory "
                    "specification says), the cache is under ~/.cache")
        xdg = None
    home = xdg if xdg else os.path.join("~", ".cache")  # (Path.home() raised RuntimeError where there is no home)
    return Path(expand_home(home, "the remote manifest's local cache", fix)) / "chorus-batch"


def _private_dir(path: Path) -> Path:
    """The folder, and each one above it made here (the cache's `chorus-batch/manifests`), owner-only whatever the umask:
    mkdir(parents=True, mode=0o700) gave only the last folder that mode, the ones above it the umask's (0777 under umask
    000). The working copy's own folder is made owner-only even when it was there."""
    from ..fsutil import private_folder

    private_folder(path)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    return path


def _md5_file(path: Path) -> bytes:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def _sidecars(db: Path) -> list[Path]:
    """SQLite's files beside a manifest that belong to one particular copy of it."""
    return [Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]


def _checkpoint(db: Path) -> None:
    """Everything committed is in the main file (WAL folded in), so the file alone is the manifest."""
    from .manifest import connect_sqlite3

    con = connect_sqlite3(db, str(db))
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def holder_metadata(argv: list[str], lease_s: int) -> dict[str, str]:
    from ..urls import redact

    command = " ".join(redact(argv))[:1000]
    values = {"host": socket.gethostname(), "user": user_name(), "pid": str(os.getpid()),
              "started": iso(utc_now()), "command": command, "lease_s": str(lease_s)}
    # Metadata travels in HTTP headers: ASCII only.
    return {_META + key: quote(value, safe=" /:=,.-_@*+") for key, value in values.items()}


def describe_holder(metadata: dict[str, str] | None) -> str:
    info = {k[len(_META):]: unquote(v) for k, v in (metadata or {}).items() if k.startswith(_META)}
    if "pid" not in info:
        return "an unknown process (it has not written its details yet)"
    text = (f"pid {info['pid']} on host {info.get('host', '?')} (user {info.get('user', '?')}), "
            f"started {info.get('started', '?')}")
    return text + (f", command: {info['command']}" if info.get("command") else "")


class _Renewer(threading.Thread):
    """Renews the lease every third of its duration until stopped; notes when the lease is lost."""

    def __init__(self, lease: Any, interval: float):
        super().__init__(name="chorus-lease-renewer", daemon=True)
        self.lease, self.interval = lease, interval
        self.stopping = threading.Event()
        self.lost: str | None = None

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.lease.renew()
            except Exception as exc:  # noqa: BLE001 - a renewal that fails is tried again, or the lease is lost
                code = str(getattr(exc, "error_code", "") or "")
                if code in _LOST_CODES or getattr(exc, "status_code", None) in (409, 412):
                    self.lost = code or str(getattr(exc, "status_code", ""))
                    return
                log.debug("lease renewal failed (tried again): %s", type(exc).__name__)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=10)


class RemoteManifest:
    """One manifest blob, its lease and its local working copies."""

    def __init__(self, url: str, cloud: CloudSettings | None = None, *, what: str = "manifest"):
        from ..config import CloudSettings

        self.what = what  # what the blob is, in messages (import-journal reads a chorus-upload journal this way)
        self.url = url
        self.where = mask_url(url)
        self.container, self.name = _split(url)
        self.sign_in = azure_sign_in(cloud or CloudSettings(), url=url, what=f"the {what}")
        account = self.sign_in.account_url or self.sign_in.account_name or ""
        key = hashlib.sha256(f"{account}|{self.container}/{self.name}".encode()).hexdigest()[:24]
        self.folder = cache_base() / "manifests" / key
        file_name = Path(self.name).name
        self.local = self.folder / file_name  # the run's working copy
        self.read_copy = self.folder / "read" / file_name  # read-only commands' copy
        self.lease_s = lease_seconds()
        self._client: Any = None
        self._lock_client: Any = None
        self._made_lock = False  # this command created the lock blob (it found none)
        self._service: Any = None

    # ------------------------------------------------------------------ storage calls

    def _explain(self, exc: BaseException, action: str, *, writes: bool | None = None) -> ChorusError:
        """A refusal named as the sources' and the upload's are: with a SAS token, what its sp= lacks."""
        return explain(exc, where=self.where, how=self.sign_in.how, action=action, writes=writes,
                       sas_permissions=getattr(self.sign_in, "sas_permissions", None))

    def _call(self, action: str, fn: Callable[[], T], *, retry: bool = True, writes: bool | None = None) -> T:
        """`writes`: the call writes (the lock blob, its lease): a refusal asks for write permission, not read."""
        try:
            return retrying(fn) if retry else fn()
        except storage_errors() as exc:
            raise self._explain(exc, action=action, writes=writes) from None

    def blob(self) -> Any:
        if self._client is None:
            service = self._call("sign in to", lambda: sync_blob_service_client(self.sign_in), retry=False)
            self._service = service
            self._client = service.get_blob_client(self.container, self.name)
            self._lock_client = service.get_blob_client(self.container, self.name + ".lock")
        return self._client

    def lock_blob(self) -> Any:
        self.blob()
        return self._lock_client

    def properties(self, blob: Any = None) -> Any | None:
        """The (manifest) blob's properties; None when there is no such blob (a missing container is an error)."""
        from azure.core.exceptions import ResourceNotFoundError

        main = blob is None
        blob = blob or self.blob()

        def get() -> Any | None:
            try:
                return blob.get_blob_properties()
            except ResourceNotFoundError as exc:
                if str(getattr(exc, "error_code", "") or "") == "BlobNotFound":
                    return None
                if _container_exists(blob) is False:
                    raise
                return None

        props = self._call(f"read the {self.what} at", get)
        if props is None and main:
            self._refuse_decoded_twin(blob)
            self._refuse_folder()
        return props

    def _refuse_folder(self) -> None:
        """No blob of this name, but blobs under it: --db names a folder (a prefix), refused as a local folder is,
        not made a blob beside the folder's name (which a hierarchical-namespace account cannot even hold)."""
        self.blob()
        container = self._service.get_container_client(self.container)
        below = self._call(f"read the {self.what} at", lambda: next(iter(container.list_blobs(
            name_starts_with=self.name + "/", results_per_page=1)), None))
        if below is not None:
            flag = "--db" if self.what == "manifest" else f"the {self.what}"
            raise UsageError(f"{flag} {self.where} names a folder (blobs such as {below.name!r} are under it), not a "
                             f"{self.what} blob", where=self.where,
                             fix="give the manifest blob's URL (az://CONTAINER/path/manifest.sqlite; a manifest is "
                                 "kept outside the site's roots)" if self.what == "manifest" else
                             # (another tool's file, such as a chorus-upload journal: not a manifest's name and place)
                             f"give the {self.what} blob's own URL (az://{self.container}/{below.name}, if that "
                             "is it)")

    def _refuse_lock_blob(self) -> None:
        """--db naming the lock blob of a manifest (`manifest.sqlite.lock`, its name completed from a listing): a run
        made a manifest of it, over the lock of the manifest beside it, and a lock blob of its own beside that."""
        if not self.name.endswith(".lock") or self.what != "manifest":
            return
        self.blob()
        owner = self.name[:-len(".lock")]
        if self.properties(self._service.get_blob_client(self.container, owner)) is not None:
            raise UsageError(f"--db {self.where} is the lock blob of the manifest az://{self.container}/{owner}, not a "
                             "manifest", where=self.where,
                             fix=f"give the manifest's own URL: --db az://{self.container}/{owner}")

    def _refuse_decoded_twin(self, blob: Any) -> None:
        """No blob of this name, but one of its %-escapes decoded (my%20m.sqlite: 'my m.sqlite', where --db put it
        before '%' was taken as written): refused, not taken for a new manifest that would start over."""
        from azure.core.exceptions import ResourceNotFoundError

        decoded = unquote(self.name)
        if decoded == self.name:
            return
        self.blob()
        client = self._service.get_blob_client(self.container, decoded)

        def there() -> bool:
            try:
                client.get_blob_properties()
                return True
            except ResourceNotFoundError:
                return False

        if self._call(f"read the {self.what} at", there):
            flag = "--db" if self.what == "manifest" else f"the {self.what}"
            raise UsageError(f"{flag} {self.where}: there is no blob {self.name!r}, but there is {decoded!r} (the name "
                             "with its %-escapes decoded, where an earlier chorus-batch put it): a '%' in an az:// "
                             "URL is a character of the name", where=self.where,
                             fix=f"give it as 'az://{self.container}/{decoded}' (the name as it is, quoted for "
                                 "the shell), or rename the blob")

    # ------------------------------------------------------------------ lease

    def _acquire(self, argv: list[str]) -> Any:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        blob = self.lock_blob()
        self._made_lock = False
        if self.properties(blob) is None:  # something to lease: an empty lock blob, unless another run made one
            def create() -> None:
                with contextlib.suppress(ResourceExistsError):  # If-None-Match: *, never over another's blob
                    blob.upload_blob(b"", overwrite=False)
                    self._made_lock = True

            self._call("create the lock blob beside", create, writes=True)

        def acquire() -> Any:
            return blob.acquire_lease(lease_duration=self.lease_s)

        try:
            return retrying(acquire)
        except HttpResponseError as exc:
            if getattr(exc, "status_code", None) == 409 and "Lease" in str(getattr(exc, "error_code", "") or "Lease"):
                props = self.properties(blob)
                metadata = (props.metadata if props else None) or {}
                held = command_of(unquote(metadata.get(f"{_META}command", "")).split())
                other = "run" if held in (None, "run") else "command"  # (validate, registry: no "other run")
                raise ManifestLocked(
                    f"the manifest is locked by another {other}: {describe_holder(props.metadata if props else None)}",
                    where=self.where,
                    fix=f"wait for that {other} to finish (the lock of a run that died expires within a minute); if "
                        f"it is gone and cannot finish, break it with `chorus-batch unlock --db {self.where}`",
                ) from None
            raise self._explain(exc, action="lock (lease)",
                          writes=True) from None
        except storage_errors() as exc:
            raise self._explain(exc, action="lock (lease)",
                          writes=True) from None

    @contextlib.contextmanager
    def leased(self, argv: list[str], *, keep_partial: bool = False) -> Iterator[Path]:
        """The working copy, up to date, while this process holds the lease; uploaded back on success.
        keep_partial: what the command recorded is kept even when it fails or is stopped (an upload's
        ledger: each batch is a transaction of its own), so it is uploaded back then too."""
        # (a URL refused, a folder or a decoded twin, before a lock blob is made beside it)
        existed = self.properties() is not None
        self._refuse_lock_blob()
        try:
            with self._leased(argv, keep_partial=keep_partial) as local:
                yield local
        except ChorusError as exc:
            # A first run that failed made no manifest in Azure: said of the URL. It said "no manifest was made at
            # <the working copy in the cache>" (a site root not found), or "the manifest holds what it held before
            # (`chorus-batch versions` lists it)", of a manifest that is not there (a SAS that may not write the lock).
            if not existed and self._uploaded == "before" and getattr(exc, "committed", None) is None:
                outcome = getattr(exc, "outcome", None)
                if outcome is None and exc.exit_code == ExitCode.FAILED or outcome and str(self.local) in outcome:
                    exc.outcome = f"nothing was committed; no manifest was made at {self.where}"
            raise

    @contextlib.contextmanager
    def _leased(self, argv: list[str], *, keep_partial: bool = False) -> Iterator[Path]:
        lease = self._acquire(argv)
        renewer = _Renewer(lease, self.lease_s / 3)
        renewer.start()
        try:
            metadata = holder_metadata(argv, self.lease_s)
            self._call("lock (lease)", lambda: self.lock_blob().set_blob_metadata(metadata, lease=lease), writes=True)
            props = self.properties()
            self._refresh(self.local, props)
            try:
                self._check_copy(self.local)
            except ManifestError:
                # A blob that is no manifest (a CSV, another program's database) "was left as it is": so is the
                # folder it is in, without the lock blob this command made beside it (never one another run made)
                if self._made_lock:
                    with contextlib.suppress(Exception):
                        self.lock_blob().delete_blob(lease=lease)
                        lease = None  # (gone with its blob: nothing to release)
                raise
            self._mark_dirty(self.local)  # the run changes the copy: trusted again only after the upload
            etag = props.etag if props is not None else None
            try:
                yield self.local
            except AfterCommitError:  # the version is committed locally: it belongs in the remote manifest too
                self._upload_back(lease, renewer, etag)
                raise
            except (ChorusError, KeyboardInterrupt, Stopped) as exc:
                if isinstance(exc, KeyboardInterrupt | Stopped):
                    # A version committed to the working copy only is not in the remote manifest: said so, whatever
                    # the run said of it (a signal during its check: "had been committed before; it stays", of a
                    # version the manifest in Azure never got)
                    label, exc.committed = getattr(exc, "committed", None), None  # type: ignore[union-attr]
                    if label:
                        exc.outcome = (f"version {label} was committed to the local working copy only, and the "  # type: ignore[union-attr]
                                       f"signal came before it was uploaded: nothing was committed to {self.where}; "
                                       "the next run commits these changes again")
                if keep_partial:
                    self._upload_partial(exc, lease, renewer, etag)
                if props is None and self._made_lock and self._uploaded == "before":
                    # A first run that failed made no manifest: nor does the lock blob it made stay beside the
                    # manifest that is not there (an empty `<name>.lock` was left in the folder)
                    with contextlib.suppress(Exception):
                        self.lock_blob().delete_blob(lease=lease)
                        lease = None  # (gone with its blob: nothing to release)
                raise
            self._upload_back(lease, renewer, etag)
        finally:
            renewer.stop()
            try:
                if lease is not None:
                    # One request, not the client's 3: a storage that did not answer (the run failed on it) held the
                    # command another 33 s here, for a lease that expires by itself within lease_s
                    lease.release(retry_total=0)
            except Exception as exc:  # noqa: BLE001 - it then expires by itself
                log.warning(f"could not release the lease on {self.where} ({type(exc).__name__}); "
                            f"it expires within {self.lease_s} s")

    def _upload_back(self, lease: Any, renewer: _Renewer, etag: str | None) -> None:
        """_upload of a committed working copy; a signal meanwhile is marked `uploaded` ("done": the blob was
        replaced, before it was recorded; "during": it may or may not have been; "before": it was not), for the caller
        to say what the manifest in Azure holds: it said "nothing was committed" of a version the blob already had."""
        self._uploaded = "before"
        try:
            self._upload(lease, renewer, etag)
        except (KeyboardInterrupt, Stopped) as exc:
            exc.uploaded, exc.remote_where = self._uploaded, self.where  # type: ignore[union-attr]
            raise

    _uploaded = "before"  # how far _upload got: "before", "during" or "done" the blob's replacement

    def _upload(self, lease: Any, renewer: _Renewer, etag: str | None) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import ContentSettings

        if not self.local.exists():
            raise ManifestError("the run left no working copy to upload", where=str(self.local), fix="run again")
        _checkpoint(self.local)
        md5 = _md5_file(self.local)
        if renewer.lost:
            raise self._lost(renewer.lost)
        try:  # still ours? (and good for another lease period, the upload's time)
            retrying(lease.renew)
        except HttpResponseError as exc:
            raise self._lost(str(getattr(exc, "error_code", "") or "")) from None
        except storage_errors() as exc:
            raise self._explain(exc, action="renew the lock (lease) on",
                          writes=True) from None
        # Only over the blob this run downloaded (If-Match), or where none is yet (If-None-Match: *).
        condition = ({"overwrite": True, "etag": etag, "match_condition": MatchConditions.IfNotModified}
                     if etag else {"overwrite": False})

        def upload() -> dict:
            with open(self.local, "rb") as handle:
                return self.blob().upload_blob(
                    handle, max_concurrency=2, **condition,
                    content_settings=ContentSettings(content_type="application/vnd.sqlite3", content_md5=md5))

        try:
            self._uploaded = "during"
            response = retrying(upload)
        except HttpResponseError as exc:
            code = str(getattr(exc, "error_code", "") or "")
            if code in _LOST_CODES or code == "BlobAlreadyExists" or getattr(exc, "status_code", None) in (409, 412):
                raise self._lost(code) from None
            raise self._explain(exc, action="upload the manifest to") from None
        except storage_errors() as exc:
            raise self._explain(exc, action="upload the manifest to") from None
        self._uploaded = "done"
        pause("manifest-uploaded")  # (tests: a signal between the upload and its record)
        self._record(self.local, str(response["etag"]))

    def _upload_partial(self, exc: BaseException, lease: Any, renewer: _Renewer, etag: str | None) -> None:
        """Upload back what a failed or stopped command recorded; when that fails too, its `outcome` (what
        the command line says was kept) says where the records are, and that Azure has not got them."""
        try:
            self._upload(lease, renewer, etag)
            return
        except ChorusError as failed:
            why = failed.what
        except (KeyboardInterrupt, Stopped):
            why = "stopped again while it was written"
        n = getattr(exc, "n_confirmed", None)
        what = f"{plural(n, 'file')} confirmed by this upload {'is' if n == 1 else 'are'}" if n is not None else "what this command recorded is"
        exc.outcome = (f"{what} recorded in the local working copy only ({self.local}): writing it back to "  # type: ignore[union-attr]
                       f"{self.where} failed ({why}), so the manifest in Azure does not have them; the next upload "
                       "meets those files at the centre and confirms them without sending their bytes again "
                       "(small files are sent again)")

    def _lost(self, code: str) -> ManifestError:
        return ManifestError(
            f"this run lost its lock (lease) on the manifest, or another writer changed the manifest ("
            f"{code or 'lease lost'}; the lock broken by `unlock`, or not renewed in time), so its result was not "
            "uploaded; the remote manifest is as the other writer left it",
            where=self.where, fix="check who runs against this manifest (`chorus-batch versions --db ...`), then run again")

    # ------------------------------------------------------------------ working copies

    @staticmethod
    def _etag_file(copy: Path) -> Path:
        return Path(f"{copy}.etag")

    def _recorded(self, copy: Path) -> str | None:
        try:
            return self._etag_file(copy).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def _record(self, copy: Path, etag: str) -> None:
        from ..fsutil import write_private

        write_private(self._etag_file(copy), etag.encode())

    def _mark_dirty(self, copy: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._etag_file(copy).unlink()

    def _refresh(self, copy: Path, props: Any) -> None:
        """Make `copy` the blob's content (no blob, or an empty one: no manifest yet), unless it already is."""
        from azure.core import MatchConditions

        from ..fsutil import create_private, write_private

        _private_dir(copy.parent)
        _private_dir(self.folder)
        _private_dir(self.folder.parent)  # `manifests/`, left 0777 under umask 000 by earlier releases: every copy under it
        with contextlib.suppress(OSError):
            marker = self.folder / "url.txt"
            if not marker.exists():
                write_private(marker, (self.where + "\n").encode("utf-8"))
        if props is not None and props.size and copy.exists() and self._recorded(copy) == props.etag:
            log.debug(f"working copy {copy} is up to date (etag {props.etag})")
            return
        self._mark_dirty(copy)
        for path in (copy, *_sidecars(copy)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if props is None or not props.size:
            return  # no manifest committed yet: the run creates it
        tmp = copy.with_name(f".{copy.name}.{os.getpid()}.download")

        def download() -> None:
            with os.fdopen(create_private(tmp), "wb") as handle:
                stream = self.blob().download_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified,
                                                   max_concurrency=2)
                stream.readinto(handle)
                handle.flush()
                os.fsync(handle.fileno())

        try:
            self._call(f"download the {self.what} from", download)
            stored = getattr(props.content_settings, "content_md5", None)
            if stored and bytes(stored) != _md5_file(tmp):
                raise ManifestError(f"the downloaded {self.what} does not match its Content-MD5", where=self.where,
                                    fix="run again; if it persists, check the blob (it may have been changed by hand)")
            os.replace(tmp, copy)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._record(copy, str(props.etag))

    def fetch_read_copy(self) -> Path:
        """For read-only commands: a local copy of the manifest as it is now (no lease)."""
        props = self.properties()
        if props is None or not props.size:
            raise UsageError(f"no manifest at {self.where}" + (" yet (a first run has not committed)" if props else ""),
                             where=self.where, fix=f"run `chorus-batch run --db {self.where}` first, or check the URL")
        self._refresh(self.read_copy, props)
        self._check_copy(self.read_copy)
        return self.read_copy

    def _check_copy(self, copy: Path) -> None:
        """The downloaded blob is a manifest of this release, said with the blob's URL: a blob of another file (a
        CSV, another program's database) was reported at the working copy's path in the cache, with "move this one
        aside", which the next download undid."""
        from .manifest import Manifest

        try:
            Manifest(copy).schema_on_disk()
        except ManifestError as exc:
            exc.where = f"{self.where} (its working copy: {copy})"
            if "not a readable SQLite database" in exc.what or "not a chorus-batch manifest" in exc.what:
                exc.fix = ("check the URL: --db names the manifest blob (az://CONTAINER/path/manifest.sqlite); "
                           "this blob holds another file and was left as it is; to start a new manifest, give a "
                           "URL where there is no blob yet")
                # Another file's bytes (a CSV of person ids, say) are no working copy: not kept in the cache
                for path in (copy, self._etag_file(copy), *_sidecars(copy)):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                exc.where = self.where
            raise

    # ------------------------------------------------------------------ unlock

    def lock_holder(self) -> str | None:
        """Who holds the lease (from the blob's metadata), or None when nobody does."""
        props = self.properties(self.lock_blob())
        if props is None or str(getattr(props.lease, "state", "")) != "leased":
            return None
        return describe_holder(props.metadata)

    def break_lock(self) -> None:
        from azure.storage.blob import BlobLeaseClient

        self._call("unlock", lambda: BlobLeaseClient(self.lock_blob()).break_lease(lease_break_period=0),
                   writes=True)


def _container_exists(blob: Any) -> bool | None:
    try:
        return bool(blob._get_container_client().exists()) if hasattr(blob, "_get_container_client") else None
    except Exception:  # noqa: BLE001 - only refines a missing blob vs a missing container
        return None


@contextlib.contextmanager
def remote_manifest(url: str, cloud: CloudSettings | None, argv: list[str], *, read_only: bool = False,
                    keep_partial: bool = False) -> Iterator[Path]:
    """The local path a run works on for the manifest blob `url`: leased, uploaded back after success
    (see the module's docstring). read_only (a dry run): the current manifest, no lease, no upload."""
    remote = RemoteManifest(url, cloud)
    if read_only:
        props = remote.properties()
        remote._refresh(remote.read_copy, props)
        if props is not None and props.size:
            remote._check_copy(remote.read_copy)
        yield remote.read_copy
        return
    with remote.leased(argv, keep_partial=keep_partial) as local:
        yield local


def read_copy(url: str, cloud: CloudSettings | None = None) -> Path:
    return RemoteManifest(url, cloud).fetch_read_copy()


@contextlib.contextmanager
def downloaded(url: str, cloud: CloudSettings | None, what: str, fix: str) -> Iterator[Path]:
    """A private local copy of the blob `url` (another tool's file: a chorus-upload journal), removed afterwards."""
    remote = RemoteManifest(url, cloud, what=what)
    props = remote.properties()
    if props is None or not props.size:
        raise UsageError(f"no {what} at {remote.where}" + (" (the blob is empty)" if props else ""), where=remote.where,
                         fix=fix)
    copy = remote.folder / "import" / Path(remote.name).name
    remote._refresh(copy, props)
    try:
        yield copy
    finally:
        for path in (copy, remote._etag_file(copy), *_sidecars(copy)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


__all__ = ["RemoteManifest", "downloaded", "remote_manifest", "read_copy", "is_remote"]
