"""The central container: where a site's versions are submitted (the CHoRUS upload procedure).

`Central("az://container/prefix", cloud)` signs in as cloud roots do (sources/cloud.py: a connection
string, a SAS token, an account key or DefaultAzureCredential, from the environment and [azure]) and
offers what submission needs of it:

  put(name, open_file, size, md5)   write one blob with its Content-MD5; the bytes are hashed while they
                                    are sent and the blob is committed only when they have the MD5 the
                                    manifest recorded (else FileChanged: nothing is committed)
  check_names(srcfile, version, prefix)   why a blob name cannot be stored as it is (null when it can)
  why_not_sent(srcfile, version, prefix)  that, or an identifiable lookup table that stays at the site
  listing(version)                  name, size, Content-MD5 and etag of every blob under <version>/
  download_md5(name)                the MD5 of a blob's bytes, read back
  put_manifest(version, path)       the manifest's copy at <version>/_manifest/manifest.sqlite

Small files are one Put Blob: the service hashes what it stored and says so in its response (that MD5
is what the ledger records, "confirmed_by service"). Large files go in blocks of BLOCK_SIZE, each
block's MD5 checked by the service on arrival (transactional MD5); the whole file's MD5 is computed from
the bytes sent and set as the blob's Content-MD5 when the block list is committed ("confirmed_by
blocks"). A shared budget of block buffers bounds memory over all threads.

Nothing already at the centre is replaced unless this manifest knows it as its own: every write is
conditional (If-None-Match: *, or If-Match on the etag of a blob the ledger holds as damaged). A blob
already there with the same size and MD5 is confirmed as it is ("confirmed_by found": how a resumed
upload meets what an interrupted one sent); any other content is a Conflict, and stays. The manifest's
copy carries its manifest_id in its metadata (and the version's fingerprint: a copy of the manifest elsewhere with its
own commit of the label is another's): only a copy of the same manifest and version is replaced. Before its
first file goes into a version folder, an upload claims it (<version>/_manifest/owner, an empty blob with
its manifest_id, written only where there is none): a folder another manifest claimed or finished gets
nothing added (folder_owner).
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import polars as pl

from ..classify import LOCAL_ONLY_FIX, LOCAL_ONLY_NAME, LOCAL_ONLY_WHY
from ..errors import UsageError
from ..fsutil import read_only_sqlite
from ..sources import cloud as cloud_access
from ..sources.remote import is_folder_blob, mask_url
from ..urls import check_location

if TYPE_CHECKING:
    from ..config import CloudSettings

# Put Blob up to this size (one request, hashed by the service); above it, blocks of BLOCK_SIZE.
SINGLE_PUT_MAX = 8 << 20
BLOCK_SIZE = 8 << 20
MANIFEST_FOLDER = "_manifest"
MANIFEST_NAME = "manifest.sqlite"
COPY_OWNER = "chorus_manifest_id"  # metadata of the manifest's copy (and of the claim): which manifest wrote it
# ... and which commit of the version (UploadLedger.version_fingerprint): two copies of one manifest (copied to another
# node, restored from a backup) have one manifest_id; each that committed its own version under one label (a fixed
# --version) mixed its files into the other's folder and replaced its manifest copy, as the same manifest's.
VERSION_OWNER = "chorus_version_fingerprint"
# <version>/_manifest/owner: an empty blob the first upload into a version folder writes (If-None-Match: *) before
# its first file, carrying its manifest's id. Until the manifest's copy is there (the submission is finished), it is
# what tells another manifest with the same label that the folder is an upload in progress, not a free place.
CLAIM_NAME = "owner"
LISTING_SCHEMA = {"name": pl.String, "size": pl.Int64, "content_md5": pl.String, "etag": pl.String}
# A blob the centre moved to the Archive tier (a lifecycle rule: "archive after N days"): there, listed with its size
# and Content-MD5, but its bytes cannot be read until it is rehydrated (409 BlobArchived). verify --download said "cannot
# read az://...: check the URL and the credentials", exit 3, with nothing recorded, for one such blob of a version.
ARCHIVED = "archived"
ARCHIVED_FIX = ("rehydrate it at the centre (set its access tier to Hot or Cool; that takes hours), then run `chorus-batch "
                "verify --download` again")


def is_archived(exc: BaseException) -> bool:
    """The storage's refusal to read a blob in the Archive tier."""
    return getattr(exc, "error_code", None) == "BlobArchived"


@dataclass(frozen=True)
class FolderOwner:
    """Whose submission a version folder is: the manifest its copy names (by 'copy': finished), else the one its
    claim names (by 'claim': an upload that started there); manifest_id None: a copy that is no manifest's."""

    manifest_id: str | None
    by: str  # 'copy' | 'claim'
    blob: str  # the copy's or the claim's URL (no secrets)
    fingerprint: str | None = None  # of the version it holds (VERSION_OWNER; None: written before it was kept)
    twin: bool = False  # this manifest's id, another commit of the label (other_owner)

    def described(self) -> str:
        """What the folder is, for a message about a manifest that is not its owner."""
        if self.twin:
            return (f"holds another commit of this version label by a copy of this manifest ({'its manifest copy' if self.by == 'copy' else 'its marker'} "
                    f"{self.blob} carries this manifest's id, and another version: a copy of the manifest, on another "
                    "node or restored from a backup, committed its own version under this label and uploaded it); a "
                    "label is one submission: upload it from the manifest that committed what is there, or commit "
                    "this site's files under another --version label")
        if self.by == "copy" and self.manifest_id is None:  # (written over by another tool, or damaged)
            return (f"holds a manifest copy {self.blob} that is no manifest's (not a manifest, or one without its id), "
                    "not this manifest's")
        if self.by == "copy":
            return f"holds another manifest's submission (its manifest copy {self.blob} carries another manifest's id)"
        return (f"holds another manifest's upload, started there and not finished (its marker {self.blob}, written before "
                "its first file, carries another manifest's id; if that upload was abandoned, have the folder removed "
                "at the centre)")


class FileChanged(Exception):
    """The bytes read are not the file version the manifest recorded (size or MD5): nothing was committed."""


class Conflict(Exception):
    """The central blob holds other content than this manifest's (another manifest's or tool's): not replaced."""


class ReadFailed(Exception):
    """The site's file could not be opened or read (the OSError is its cause): nothing was committed."""


def other_owner(owner: FolderOwner | None, manifest_id: str, fingerprint: str | None) -> FolderOwner | None:
    """`owner` when the folder is not this manifest's submission of this very version: another manifest's, or
    this manifest's id with another commit of the label (twin); None when it is this one's (or nobody's)."""
    if owner is None:
        return None
    if owner.manifest_id != manifest_id:
        return owner
    if None not in (owner.fingerprint, fingerprint) and owner.fingerprint != fingerprint:
        return FolderOwner(owner.manifest_id, owner.by, owner.blob, owner.fingerprint, twin=True)
    return None


def _read(f: BinaryIO, size: int) -> bytes:
    try:
        return f.read(size)
    except OSError as exc:
        raise ReadFailed(exc.strerror or str(exc)) from exc


@dataclass(frozen=True)
class Sent:
    bytes: int
    md5: str | None  # the MD5 the service reports for the committed blob (hex)
    etag: str | None
    confirmed_by: str  # 'service' | 'blocks' | 'found' (already there with this size and MD5)
    read_back: bool = False  # found without a Content-MD5: its bytes were read back and hashed (as verify --download does)


def parse_central(url: str) -> tuple[str, str]:
    """(container, prefix) of az://container[/prefix]; a UsageError for anything else."""
    if url != url.strip():  # (`--to "$TO"` read from a file saved with Windows line ends: "az://c/site\r")
        end = "starts" if url != url.lstrip() else "ends"
        raise UsageError(f"the central URL {mask_url(url)!r} {end} with white space "
                         f"({'a carriage return, as a file saved with Windows line ends leaves' if chr(13) in url else 'a space or a tab'}):"
                         " it would be a part of every blob name, or no URL at all; nothing was done",
                         where="--to / [central] to", fix=f"write it without: {mask_url(url.strip())!r}"
                                                          + (" (save the file it was read from with Unix line ends: "
                                                             "dos2unix)" if chr(13) in url else ""))
    if cloud_access.protocol_of(url) in cloud_access.AZURE_PROTOCOLS:  # ('?', '//', credentials: as for any root)
        check_location(url, "--to / [central] to")
    parts = urlsplit(url)
    if parts.scheme not in cloud_access.AZURE_PROTOCOLS or not parts.netloc:
        raise UsageError(f"the central container must be an Azure URL, az://CONTAINER[/PREFIX], not {mask_url(url)!r}",
                         where="--to / [central] to", fix='pass --to az://<container>/ (or set [central] to = "az://..." '
                                                          "in chorus.toml); the account comes from [azure] or the environment")
    if parts.query:
        raise UsageError("the central URL carries a query (a SAS token?); secrets never go into a URL here",
                         where="--to / [central] to", fix="put the SAS token in AZURE_STORAGE_SAS_TOKEN and pass the "
                                                          "plain az://container/ URL")
    dotted = [part for part in parts.path.strip("/").split("/") if part.endswith(".")]
    if dotted:  # (check_names checks the files' names; the prefix is a part of every blob name too)
        raise UsageError(f"the central URL {mask_url(url)!r} has a folder name ending in '.' ({dotted[0]!r}), which Azure "
                         "does not keep as it is: the blobs would not be where the ledger says",
                         where="--to / [central] to", fix="give the prefix without a '.' at the end of a folder name, "
                                                          "e.g. az://<container>/<site>/")
    prefix = parts.path.strip("/")
    # The prefix is a part of every blob name: a backslash (Azure turns it into '/') or a control character there put
    # every blob elsewhere than the ledger's destination says (check_names checked only the files' names)
    why = pl.select(check_names(pl.lit(prefix), pl.lit("v"), "", reserved=False)).item() if prefix else None
    if why is not None:
        raise UsageError(f"the prefix of the central URL {mask_url(url)!r} cannot begin blob names as it is: "
                         f"{why.replace('its name', 'it', 1)}, so the blobs would not be where the ledger says",
                         where="--to / [central] to",
                         fix="give the prefix with '/' between folder names and without control characters, e.g. "
                             "az://<container>/<site>/")
    # abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/: the container (the account is the sign-in's, checked by Central);
    # the ledger is kept per container as az://CONTAINER[/PREFIX], however the URL was spelt
    return parts.netloc.split("@", 1)[0], prefix


def check_apart(url: str, roots: list[str]) -> None:
    """A UsageError when the central container/prefix is one of the site's Azure roots, lies inside one, or holds
    one: the next run would take the submission for site files (or submit the site into itself)."""
    container, prefix = parse_central(url)
    for root in roots:
        parts = urlsplit(root)
        if parts.scheme not in cloud_access.AZURE_PROTOCOLS or parts.netloc.split("@")[0] != container:
            continue
        path = parts.path.strip("/")
        if not path or not prefix or f"{prefix}/".startswith(f"{path}/") or f"{path}/".startswith(f"{prefix}/"):
            raise UsageError(f"the central container {central_url(url)} overlaps the site's root {mask_url(root)}: "
                             "the next run would record what is submitted as site files",
                             where="--to / [central] to", fix="upload to the central container (a container or "
                                                              "prefix of its own, outside the site), e.g. --to az://<site>/")


def central_url(url: str) -> str:
    """The central container's URL as the ledger records it: az://container[/prefix], no secrets."""
    container, prefix = parse_central(url)
    return "az://" + container + ("/" + prefix if prefix else "")


# What Azure rewrites or refuses in a blob name (Naming and Referencing Containers, Blobs, and Metadata):
# '\\' becomes '/', control characters and non-characters are refused or mangled on the way (URLs, XML
# listings), '.'/'..' segments are resolved away, a segment ending in '.' (or an empty one) is not kept
# as it is; at most 1024 characters and 254 segments in all.
MAX_NAME = 1024
MAX_SEGMENTS = 254
_BAD_CHARS = r"[\x00-\x1f\x7f-\x9f\x{FFFE}\x{FFFF}]"


def check_names(names: pl.Expr, version: pl.Expr | str, prefix: str, *, reserved: bool = True) -> pl.Expr:
    """Why each site-relative name cannot be stored as it is at <prefix>/<version>/<name>; null when it can.
    reserved (site files, not the central prefix): a name in the version folder's _manifest/ is refused too."""
    full = pl.concat_str([pl.lit(prefix + "/" if prefix else ""), version if isinstance(version, pl.Expr) else pl.lit(version),
                          pl.lit("/"), names])
    # <version>/_manifest/ holds the manifest's copy and the claim: a site file there (a top folder or file named
    # _manifest) was sent, then left out of every listing check ("missing", the version never finished, each upload
    # said to run it again), and _manifest/owner or _manifest/manifest.sqlite was taken for the claim or the copy.
    in_manifest_folder = (names == MANIFEST_FOLDER) | names.str.starts_with(MANIFEST_FOLDER + "/")
    return (pl.when(pl.lit(reserved) & in_manifest_folder)
            .then(pl.lit(f"its top folder (or name) '{MANIFEST_FOLDER}' is where upload keeps the manifest's copy and "
                         f"its claim of the version folder (<version>/{MANIFEST_FOLDER}/): the blob would be taken for "
                         "them, or left out of every check"))
            .when(names.str.contains(r"\\")).then(pl.lit("its name holds a backslash, which Azure turns into '/'"))
            .when(names.str.contains(_BAD_CHARS)).then(pl.lit("its name holds a control character (or a "
                                                               "character that is not one), which Azure does not keep"))
            .when(names.str.contains(r"\.(/|$)|//|^/|/$"))
            .then(pl.lit("a part of its name ends with '.' (or is empty), which Azure does not keep as it is"))
            .when(full.str.len_chars() > MAX_NAME).then(pl.lit(f"its blob name is longer than {MAX_NAME} characters"))
            .when(full.str.count_matches("/") >= MAX_SEGMENTS)
            .then(pl.lit(f"its blob name has more than {MAX_SEGMENTS} parts ('/')"))
            .otherwise(pl.lit(None, pl.String)))


def why_not_sent(names: pl.Expr, version: pl.Expr | str, prefix: str) -> pl.Expr:
    """Why `upload` (and its script) never sends each site file, null when it may: an identifiable lookup table the
    Imaging SOP keeps at the site (whatever validation said of the version), or a name the centre cannot store."""
    return (pl.when(names.str.contains(LOCAL_ONLY_NAME)).then(pl.lit(LOCAL_ONLY_WHY))
            .otherwise(check_names(names, version, prefix)))


def remedy(why: pl.Expr) -> pl.Expr:
    """What to do about a file why_not_sent refused."""
    return (pl.when(why == LOCAL_ONLY_WHY).then(pl.lit(LOCAL_ONLY_FIX + " (the next run records it gone)"))
            .otherwise(pl.lit("rename it in the site (the next run records the new name)")))


def md5_b64(md5_hex: str) -> str:
    """The Content-MD5 form (base64 of the 16 bytes) of a hex MD5."""
    return base64.b64encode(bytes.fromhex(md5_hex)).decode()


def _hex(content_md5: Any) -> str | None:
    return bytes(content_md5).hex() if content_md5 else None


def _condition(etag: str | None) -> dict:
    """Write only over the blob with this etag, or (None) only where there is no blob."""
    from azure.core import MatchConditions

    return ({"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag
            else {"match_condition": MatchConditions.IfMissing})


def _unquoted(etag: str | None) -> str | None:
    """An etag as listings give it (Get Blob Properties quotes it)."""
    return etag.strip('"') if etag else None


def _look(blob: Any) -> Any | None:
    """The blob's properties; None when there is no such blob (a missing container is an error)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return blob.get_blob_properties()
    except ResourceNotFoundError as exc:
        if getattr(exc, "error_code", None) == "ContainerNotFound":
            raise
        return None


def _md5_of(blob: Any) -> tuple[str, int]:
    """(MD5 of the blob's bytes, size), read back."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    for chunk in blob.download_blob(max_concurrency=1, decompress=False).chunks():  # as stored, never decoded
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _copy_owner(blob: Any, props: Any) -> str | None:
    """The manifest_id of a manifest's copy: from its metadata, else (a copy written before it was kept
    there) from the copy itself."""
    if (props.metadata or {}).get(COPY_OWNER):
        return props.metadata[COPY_OWNER]
    from ..fsutil import scratch_folder

    with scratch_folder("chorus-owner-") as folder:  # (a manifest holds person ids: removed after a kill too)
        copy = folder / MANIFEST_NAME
        with open(copy, "wb") as f:
            blob.download_blob(max_concurrency=2).readinto(f)
        try:
            con = read_only_sqlite(copy)
            try:
                row = con.execute("SELECT value FROM meta WHERE key = 'manifest_id'").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return None  # not a manifest: nobody's copy to replace
        return row[0] if row else None


class Central:
    list_page = 5000  # blobs a List Blobs page holds (the service's most; tests page by fewer)

    def __init__(self, url: str, cloud: CloudSettings, *, connections: int = 8, block_buffers: int = 8):
        self.container_name, self.prefix = parse_central(url)
        self.url = central_url(url)
        self.sign_in = cloud_access.azure_sign_in(cloud, url=url, what="--to / [central] to")
        self.how = self.sign_in.how
        self._service = cloud_access.sync_blob_service_client(self.sign_in, connections=connections)
        self.container = self._service.get_container_client(self.container_name)
        # Every block in memory holds one of these: at most block_buffers x BLOCK_SIZE bytes in flight.
        self._buffers = threading.BoundedSemaphore(max(1, block_buffers))
        self._block_pool = ThreadPoolExecutor(max(1, block_buffers), thread_name_prefix="chorus-block")
        # Bytes of the blocks staged so far of each large file still being sent (blob name -> bytes): what the progress
        # lines count of it before it settles (they said "0/1 file, 0 files/s" all through a 320 MiB file's send)
        self._staged: dict[str, int] = {}
        self._staged_lock = threading.Lock()

    def staged_bytes(self) -> int:
        """Bytes of the blocks the service has taken of the large files still being sent."""
        with self._staged_lock:
            return sum(self._staged.values())

    def forget_staged(self, version: str, srcfile: str) -> None:
        """The file settled (sent, found, failed): its staged bytes are counted as its outcome says, no longer here."""
        with self._staged_lock:
            self._staged.pop(self.name(version, srcfile), None)

    def _block_done(self, name: str, length: int, future: Future) -> None:
        self._buffers.release()
        if not future.cancelled() and future.exception() is None:
            with self._staged_lock:
                if name in self._staged:
                    self._staged[name] += length

    def close(self) -> None:
        self._block_pool.shutdown(wait=False, cancel_futures=True)
        self._service.close()

    def name(self, version: str, srcfile: str) -> str:
        return "/".join(p for p in (self.prefix, version, srcfile) if p)

    def destination(self, version: str, srcfile: str) -> str:
        return f"az://{self.container_name}/{self.name(version, srcfile)}"

    def explain(self, exc: BaseException, action: str, where: str | None = None, *, writes: bool | None = None):
        return cloud_access.explain(exc, where=where or self.url, how=self.how, action=action, writes=writes,
                                    sas_permissions=self.sign_in.sas_permissions)

    def check(self, *, write: bool) -> None:
        """The container is there and this sign-in may list it: a SourceError (what, where, fix) otherwise.
        Asked with a listing of one blob, the permission upload and verify need anyway: a container SAS
        (racwl, what a centre hands out) may not read the container's properties."""
        try:
            cloud_access.retrying(lambda: next(iter(self.container.list_blobs(results_per_page=1)), None))
        except cloud_access.storage_errors() as exc:
            error = self.explain(exc, "list", writes=write)
            if write and getattr(error, "kind", None) == "permission" and not cloud_access.sas_lacking(
                    self.sign_in.sas_permissions, True):  # (upload also reads and writes blobs)
                error.fix = ("an upload lists, reads and writes blobs: grant the signed-in identity the 'Storage Blob "
                             "Data Contributor' role on the container (role assignments take a few minutes), or use a "
                             "SAS token with read, add, create, write and list (racwl) permissions")
            raise error from None

    # ------------------------------------------------------------------ writing

    def put(self, version: str, srcfile: str, open_file: Callable[[], BinaryIO], size: int, md5_hex: str,
            replace_etag: str | None = None) -> Sent:
        """Send one file version to <version>/<srcfile> with Content-MD5 = md5_hex (see the module doc).
        replace_etag: the blob there that this manifest may replace (one verify found damaged); else
        only a missing blob is written. Conflict when another content is there."""
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.storage.blob import ContentSettings

        blob = self.container.get_blob_client(self.name(version, srcfile))
        settings = ContentSettings(content_type="application/octet-stream", content_md5=bytearray.fromhex(md5_hex))
        if size > SINGLE_PUT_MAX or replace_etag:  # many bytes to send, or a damaged blob: look first
            props = _look(blob)
            if props is None or _unquoted(props.etag) != _unquoted(replace_etag):
                if props is not None:
                    return self._same(blob, props, size, md5_hex)
                replace_etag = None
            else:
                replace_etag = props.etag  # (quoted as the service wants it in If-Match)
        for _ in range(2):  # a blob that vanishes between a refused write and the look: once more
            try:
                return self._put(blob, open_file, size, md5_hex, settings, _condition(replace_etag))
            except (ResourceExistsError, ResourceModifiedError):
                props = _look(blob)
                if props is not None:
                    return self._same(blob, props, size, md5_hex)
            replace_etag = None
        raise Conflict(f"az://{self.container_name}/{blob.blob_name} was written and removed again by someone else "
                       "while it was sent")

    def confirm(self, version: str, srcfile: str, size: int, md5_hex: str, owner: FolderOwner) -> Sent:
        """<version>/<srcfile> in a folder that is another manifest's submission or upload (`owner`): never written
        there. Sent (found) when the blob holds this very content, else a Conflict."""
        blob = self.container.get_blob_client(self.name(version, srcfile))
        props = _look(blob)
        if props is None:
            raise Conflict(f"az://{self.container_name}/{self.name(version, '')}/ {owner.described()}, which has "
                           f"no {srcfile}: it was not written into it")
        return self._same(blob, props, size, md5_hex)

    def _put(self, blob: Any, open_file: Callable[[], BinaryIO], size: int, md5_hex: str, settings: Any,
             condition: dict) -> Sent:
        try:
            f = open_file()
        except OSError as exc:
            raise ReadFailed(exc.strerror or str(exc)) from exc
        with f:
            if size <= SINGLE_PUT_MAX:
                data = _read(f, size + 1)
                if len(data) != size or hashlib.md5(data, usedforsecurity=False).hexdigest() != md5_hex:
                    raise FileChanged("its bytes are not the ones recorded (size or MD5 differ)")
                reply = blob.upload_blob(data, length=size, overwrite=True, content_settings=settings,
                                         validate_content=True, max_concurrency=1, **condition)
                return Sent(size, _hex(reply.get("content_md5")) or md5_hex, reply.get("etag"), "service")
            return self._put_blocks(blob, f, size, md5_hex, settings, condition)

    def _same(self, blob: Any, props: Any, size: int, md5_hex: str) -> Sent:
        """The blob already there: confirmed when it holds this very content, else a Conflict."""
        held = _hex(props.content_settings.content_md5)
        read_back = held is None and props.size == size
        if read_back:  # sent by a tool that set no Content-MD5: its bytes decide
            held = _md5_of(blob)[0]
        if props.size == size and held == md5_hex:
            return Sent(size, md5_hex, props.etag, "found", read_back)
        raise Conflict(f"az://{self.container_name}/{blob.blob_name} already holds other content ({props.size} bytes, "
                       f"MD5 {held or 'unknown'}; this manifest's file: {size} bytes, MD5 {md5_hex}): it was not "
                       "replaced")

    def _put_blocks(self, blob: Any, f: BinaryIO, size: int, md5_hex: str, settings: Any, condition: dict) -> Sent:
        from azure.storage.blob import BlobBlock

        digest = hashlib.md5(usedforsecurity=False)
        staged: list[Future] = []
        blocks: list[Any] = []
        sent = 0
        with self._staged_lock:
            self._staged[blob.blob_name] = 0
        try:
            while True:
                self._buffers.acquire()  # released when the block's upload ends, or is cancelled
                try:
                    data = _read(f, BLOCK_SIZE)
                except BaseException:
                    self._buffers.release()
                    raise
                if not data:
                    self._buffers.release()
                    break
                digest.update(data)
                sent += len(data)
                block_id = base64.b64encode(f"{len(blocks):08d}".encode()).decode()
                blocks.append(BlobBlock(block_id=block_id))
                future = self._block_pool.submit(blob.stage_block, block_id, data, length=len(data),
                                                 validate_content=True)
                future.add_done_callback(partial(self._block_done, blob.blob_name, len(data)))
                staged.append(future)
            for future in staged:
                future.result()
        finally:
            for future in staged:
                future.cancel()
        if sent != size or digest.hexdigest() != md5_hex:
            raise FileChanged("its bytes are not the ones recorded (size or MD5 differ); its blocks were not committed")
        reply = blob.commit_block_list(blocks, content_settings=settings, **condition)
        return Sent(sent, md5_hex, reply.get("etag"), "blocks")

    def put_manifest(self, version: str, path: Path, manifest_id: str, fingerprint: str | None = None) -> str:
        """The manifest's copy next to its version; returns its URL (no secrets). Only a copy of the same
        manifest (manifest_id) and version (fingerprint: VERSION_OWNER) is replaced; another's is a Conflict."""
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.storage.blob import ContentSettings

        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        name = self.name(version, f"{MANIFEST_FOLDER}/{MANIFEST_NAME}")
        url = f"az://{self.container_name}/{name}"
        blob = self.container.get_blob_client(name)
        props = _look(blob)
        owner = _copy_owner(blob, props) if props is not None else None
        if props is not None and owner != manifest_id:
            # A blob there that is no manifest at all (written over, damaged) was called another manifest's copy.
            what = ("the copy of another manifest (its versions have the same labels)" if owner is not None else
                    f"a blob of {props.size} bytes that is no manifest's copy (not a manifest, or one without its id: "
                    "written over by someone else, or damaged)")
            raise Conflict(f"{url} is {what}: it was not replaced")
        twin = other_owner(FolderOwner(owner, "copy", url, (props.metadata or {}).get(VERSION_OWNER)) if props else None,
                           manifest_id, fingerprint)
        if twin is not None:
            raise Conflict(f"{self.url}/{version}/ {twin.described()}: it was not replaced")
        if props is None:  # a folder another manifest is uploading into: its copy is that manifest's to write
            claim = other_owner(self._claim_owner(version), manifest_id, fingerprint)
            if claim is not None:
                raise Conflict(f"{self.url}/{version}/ {claim.described()}: this manifest's copy was not put there")
        try:
            with open(path, "rb") as f:
                blob.upload_blob(f, overwrite=True, max_concurrency=2, validate_content=True,
                                 metadata={COPY_OWNER: manifest_id, **({VERSION_OWNER: fingerprint} if fingerprint else {})},
                                 **_condition(props.etag if props else None),
                                 content_settings=ContentSettings(content_type="application/vnd.sqlite3",
                                                                  content_md5=bytearray(digest.digest())))
        except (ResourceExistsError, ResourceModifiedError):
            raise Conflict(f"{url} was written by someone else while this copy was sent: it was not replaced") from None
        return url

    # ------------------------------------------------------------------ reading

    def copy_holder(self, version: str, manifest_id: str, fingerprint: str | None,
                    doing: str = "read") -> tuple[bool, FolderOwner | None]:
        """(there, whose it is when it is not this manifest's commit of the version) of
        <version>/_manifest/manifest.sqlite: by the manifest's id and the version's commit (its fingerprint,
        VERSION_OWNER), as put_manifest decides what it may replace. The one check of verify (the copy "as recorded"),
        of upload (a finished version's copy kept) and of its dry run (the copy it would put there): by the id alone,
        a copy of this manifest that committed its own version under the label and put its copy there was taken for
        this one's. `doing`: what a failure says was being done (an upload's look needs what the upload needs)."""
        blob = self.container.get_blob_client(self.name(version, f"{MANIFEST_FOLDER}/{MANIFEST_NAME}"))
        try:
            props = cloud_access.retrying(lambda: _look(blob))
            if props is None:
                return False, None
            owner = FolderOwner(_copy_owner(blob, props), "copy", f"az://{self.container_name}/{blob.blob_name}",
                                (props.metadata or {}).get(VERSION_OWNER))
        except cloud_access.storage_errors() as exc:
            raise self.explain(exc, doing, f"{self.url}/{version}/{MANIFEST_FOLDER}/") from None
        return True, other_owner(owner, manifest_id, fingerprint)

    def copy_damage(self, version: str) -> str | None:
        """<version>/_manifest/manifest.sqlite read back (verify --download): why its bytes are not the copy upload put
        there (not its Content-MD5, no readable manifest), or None when they are (or it is gone: said elsewhere);
        ARCHIVED when it is in the Archive tier (not read)."""
        from ..fsutil import scratch_folder

        blob = self.container.get_blob_client(self.name(version, f"{MANIFEST_FOLDER}/{MANIFEST_NAME}"))
        try:
            props = cloud_access.retrying(lambda: _look(blob))
            if props is None:
                return None
            with scratch_folder("chorus-copy-check-") as folder:  # (a manifest holds person ids: removed after a kill too)
                copy = folder / MANIFEST_NAME
                digest = hashlib.md5(usedforsecurity=False)

                def read() -> None:
                    digest.__init__(usedforsecurity=False)
                    with open(copy, "wb") as f:
                        for chunk in blob.download_blob(max_concurrency=2).chunks():
                            digest.update(chunk)
                            f.write(chunk)

                try:
                    cloud_access.retrying(read)
                except cloud_access.storage_errors() as exc:
                    if is_archived(exc):
                        return ARCHIVED
                    raise
                held = _hex(props.content_settings.content_md5)
                if held is not None and digest.hexdigest() != held:
                    return f"its bytes, read back, have MD5 {digest.hexdigest()}, not its Content-MD5 {held} (damaged at the centre)"
                try:
                    con = read_only_sqlite(copy)
                    try:
                        check = con.execute("PRAGMA quick_check").fetchone()[0]
                        con.execute("SELECT value FROM meta WHERE key = 'manifest_id'").fetchone()
                    finally:
                        con.close()
                except sqlite3.Error as exc:
                    return f"read back, it is no readable manifest ({exc})"
                return None if check == "ok" else f"read back, it is a damaged SQLite database ({check})"
        except cloud_access.storage_errors() as exc:
            raise self.explain(exc, "read", f"{self.url}/{version}/{MANIFEST_FOLDER}/") from None

    def _claim_owner(self, version: str, claim_as: str | None = None, fingerprint: str | None = None) -> FolderOwner | None:
        """The claim of <version>/ (None: nobody's); claim_as: claim a folder nobody claimed for this manifest first
        (conditional: of two uploads starting at once, one claims it and the other reads whose it is)."""
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        name = self.name(version, f"{MANIFEST_FOLDER}/{CLAIM_NAME}")
        blob = self.container.get_blob_client(name)
        url = f"az://{self.container_name}/{name}"
        props = cloud_access.retrying(lambda: _look(blob))
        if props is None and claim_as is not None:
            def claim() -> None:
                try:
                    blob.upload_blob(b"", metadata={COPY_OWNER: claim_as, **({VERSION_OWNER: fingerprint} if fingerprint
                                                                               else {})}, **_condition(None))
                except (ResourceExistsError, ResourceModifiedError):
                    pass  # claimed meanwhile (or by this very request, whose reply was lost): whose it is, below
            cloud_access.retrying(claim)
            props = cloud_access.retrying(lambda: _look(blob))
        metadata = (props.metadata or {}) if props is not None else {}
        return None if props is None else FolderOwner(metadata.get(COPY_OWNER), "claim", url, metadata.get(VERSION_OWNER))

    def folder_owner(self, version: str, doing: str = "read", *, claim_as: str | None = None,
                     fingerprint: str | None = None) -> FolderOwner | None:
        """Whose submission <version>/ is: the manifest its copy names (finished), else the one its claim names (an
        upload started there); None when neither is there. claim_as (an upload, before its first file): a folder
        nobody holds is claimed for that manifest id first. `doing`: what a failure says was being done."""
        copy = self.container.get_blob_client(self.name(version, f"{MANIFEST_FOLDER}/{MANIFEST_NAME}"))
        try:
            props = cloud_access.retrying(lambda: _look(copy))
            if props is not None:
                return FolderOwner(_copy_owner(copy, props), "copy", f"az://{self.container_name}/{copy.blob_name}",
                                   (props.metadata or {}).get(VERSION_OWNER))
            return self._claim_owner(version, claim_as, fingerprint)
        except cloud_access.storage_errors() as exc:
            # (a claim is a write: mark-uploaded "looks at" the folder and claims it, and a refusal said "not allowed
            # to list or read", to a sign-in that may)
            raise self.explain(exc, doing, f"{self.url}/{version}/{MANIFEST_FOLDER}/",
                               writes=True if claim_as is not None else None) from None

    def copies_of(self, manifest_id: str, labels: set[str]) -> list[str]:
        """The version folders under the prefix, other than `labels`, whose manifest copy is manifest_id's: versions
        this manifest uploaded and no longer has (it was restored from an older copy). One listing by '/'."""
        start = f"{self.prefix}/" if self.prefix else ""
        try:
            folders = cloud_access.retrying(lambda: [
                item.name[len(start):].rstrip("/")
                for item in self.container.walk_blobs(name_starts_with=start or None, delimiter="/")
                if item.name.endswith("/")])
        except cloud_access.storage_errors() as exc:
            raise self.explain(exc, "list", self.url) from None
        # The owner from the copy's metadata only: a copy from before it was kept there would be downloaded (and
        # another manifest's, in a shared prefix, on every upload) to learn whose it is.
        def owner(label: str) -> str | None:
            blob = self.container.get_blob_client(self.name(label, f"{MANIFEST_FOLDER}/{MANIFEST_NAME}"))
            try:
                props = cloud_access.retrying(lambda: _look(blob))
            except cloud_access.storage_errors() as exc:
                raise self.explain(exc, "read", f"{self.url}/{label}/{MANIFEST_FOLDER}/") from None
            return (props.metadata or {}).get(COPY_OWNER) if props is not None else None

        return [label for label in sorted(set(folders) - labels) if owner(label) == manifest_id]

    def listing(self, version: str) -> pl.DataFrame:
        """Every blob under <version>/ (its manifest copy left out): srcfile-relative name, size, Content-MD5 (hex), etag."""
        folder = self.name(version, "") + "/"
        rows: dict[str, list] = {"name": [], "size": [], "content_md5": [], "etag": []}

        def collect() -> None:
            for key in rows:
                rows[key].clear()
            # With metadata: on an account with a hierarchical namespace (ADLS Gen2) each folder is an entry of its own,
            # listed as an empty blob carrying hdi_isfolder=true (Storage Explorer and azcopy make such markers
            # elsewhere too). They are no files: taken for blobs the manifest does not list, every version at such a
            # centre stayed unfinished, and verify exited 1, for the folders upload's own blobs made.
            for full, size, content_md5, etag, metadata in self._list_raw(folder):
                name = full[len(folder):]
                if name.startswith(MANIFEST_FOLDER + "/") or name == MANIFEST_FOLDER:
                    continue
                if not size and (name.endswith("/") or is_folder_blob(metadata)):
                    continue
                rows["name"].append(name)
                rows["size"].append(size)
                rows["content_md5"].append(base64.b64decode(content_md5).hex() if content_md5 else None)
                rows["etag"].append(etag)

        try:
            cloud_access.retrying(collect)
        except cloud_access.storage_errors() as exc:
            raise self.explain(exc, "list", f"{self.url}/{version}/") from None
        return pl.DataFrame(rows, schema=LISTING_SCHEMA)

    def _list_raw(self, prefix: str) -> Iterator[tuple[str, int, str | None, str | None, dict[str, str]]]:
        """(name, size, Content-MD5 as base64, etag, metadata) of each blob under prefix, page by page: the List Blobs
        XML read with ElementTree. The SDK's list_blobs spent three quarters of a listing check in its model
        deserialiser (a million calls for 10,000 blobs), about half of the check's time. The request goes through the
        client's own pipeline (sign-in, retries); a refusal is raised as the SDK raises it (error_code and all)."""
        import xml.etree.ElementTree as ET
        from urllib.parse import quote, unquote

        from azure.core.exceptions import HttpResponseError
        from azure.core.rest import HttpRequest

        try:  # (two private names of the SDK: a release that moves them gets the SDK's own listing, slower, the same)
            from azure.storage.blob._shared.response_handlers import process_storage_error

            send = self.container._client._send_request  # (the generated client's: it runs the pipeline)
        except (ImportError, AttributeError):
            for item in self.container.list_blobs(name_starts_with=prefix, include=["metadata"]):
                md5 = item.content_settings.content_md5
                yield (item.name, int(item.size or 0), base64.b64encode(bytes(md5)).decode() if md5 else None,
                       item.etag, item.metadata or {})
            return
        # (a client signed in with a SAS in its connection string, SharedAccessSignature=, carries the token as the
        # query of its url: the listing's parameters go after it, not after a second '?', which the service refused
        # as "Bad Request": upload never completed a version, verify verified nothing)
        address, _, query = self.container.url.partition("?")
        base = (f"{address}?{query + '&' if query else ''}restype=container&comp=list&include=metadata"
                f"&maxresults={self.list_page}&prefix={quote(prefix, safe='')}")
        marker = ""
        while True:
            url = base + (f"&marker={quote(marker, safe='')}" if marker else "")
            request = HttpRequest("GET", url, headers={"x-ms-version": self.container.api_version})
            response = send(request)
            try:
                response.raise_for_status()
            except HttpResponseError as exc:
                process_storage_error(exc)
            root = ET.fromstring(response.content)
            for blob in root.iter("Blob"):
                name_element = blob.find("Name")
                name = (name_element.text or "") if name_element is not None else ""
                if name_element is not None and name_element.get("Encoded") == "true":
                    name = unquote(name)  # (a name with characters XML cannot hold comes percent-encoded)
                props = blob.find("Properties")
                get = props.findtext if props is not None else (lambda _key: None)
                metadata = {m.tag: m.text or "" for m in blob.find("Metadata") or ()}
                yield name, int(get("Content-Length") or 0), get("Content-MD5") or None, get("Etag"), metadata
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return

    def download_md5(self, version: str, srcfile: str) -> tuple[str, int] | str | None:
        """(MD5 of the bytes, size) of a blob, read back; None when it is not there; ARCHIVED when it is in the
        Archive tier (its bytes cannot be read until it is rehydrated)."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            return _md5_of(self.container.get_blob_client(self.name(version, srcfile)))
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise
            return None
        except HttpResponseError as exc:
            if is_archived(exc):
                return ARCHIVED
            raise
