"""Any fsspec file system (az://, abfs://, s3://, memory://, ...): listed in one call,
read with threads (the waits are on the network)."""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import io
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import pyarrow as pa

from ..errors import ChorusError, ConfigError, SourceError
from ..times import clamp_ns
from ..walk import BATCH_ROWS
from . import cloud as cloud_access
from .base import (FileChangedWhileHashing, FileStat, HashingReader, HashOutcome, Parse, hash_rest, listing_batch,
                   parse_through)
from ..urls import mask_url  # noqa: F401  (re-exported: `from chorus_batch.sources.remote import mask_url`)

if TYPE_CHECKING:
    from ..config import CloudSettings

# Storages whose listing carries an MD5 they hold for each object (Azure Blob's Content-MD5, S3's
# ETag of an object uploaded in one part) and an etag that changes whenever the object is written.
_SERVER_MD5_PROTOCOLS = ("az", "abfs", "abfss", "s3", "s3a")
_HEX_MD5 = re.compile(r"^[0-9a-f]{32}$")
# What a URL parse drops from a name (urllib.parse's unsafe bytes): adlfs cannot open a blob whose name holds one
_URL_DROPPED = re.compile(r"[\t\n\r]")
# Bytes per ranged GET when a file is downloaded to be hashed: one request per 64 KiB read would spend
# the time in round trips; 8 MiB keeps memory bounded (one block per hashing thread).
DOWNLOAD_BLOCK = 8 << 20


def _mtime_ns(info: dict) -> int:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return clamp_ns(int(value.timestamp() * 1_000_000_000))
        return clamp_ns(int(float(value) * 1_000_000_000))
    return 0


def etag_of(info: dict) -> str | None:
    """The storage's version tag of an object, without quotes (Azure `etag`, S3 `ETag`)."""
    value = info.get("etag") or info.get("ETag") or info.get("e_tag")
    return str(value).strip().strip('"') or None if value else None


def holds_its_md5(blob_type: Any) -> bool:
    """An Azure blob of this type (BlobType, or its name; None: not said) may hold the MD5 of its bytes as Content-MD5.
    An append or page blob does not: its Content-MD5 is whatever was set when it was created (or by Set Blob
    Properties), and Append Block / Put Page never update it, so after a write it is the MD5 of other bytes."""
    if blob_type is None:
        return True
    return str(getattr(blob_type, "value", blob_type)).lower() == "blockblob"


def stored_md5(info: dict) -> str | None:
    """The MD5 a storage holds for an object, as hex: Azure's Content-MD5 (raw or base64) of a block blob, or an S3
    ETag that is a plain MD5. A multipart upload's ETag ("<hex>-<parts>") is an MD5 of MD5s, not of
    the bytes: None; so is an append or page blob's Content-MD5 (holds_its_md5). (An S3 object encrypted with
    SSE-KMS or SSE-C also has an ETag that is not its MD5; the listing cannot tell, so such buckets need
    --cloud-md5 download.)"""
    if not holds_its_md5(info.get("blob_type")):
        return None
    settings = info.get("content_settings")
    if settings is None:
        etag = etag_of(info) if ("ETag" in info or "e_tag" in info) else None
        return etag.lower() if etag and _HEX_MD5.fullmatch(etag.lower()) else None
    value = getattr(settings, "content_md5", None) if not isinstance(settings, dict) else settings.get("content_md5")
    if not value:
        return None
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    else:
        try:
            raw = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            return None
    return raw.hex() if len(raw) == 16 else None


def is_folder_blob(metadata: dict | None) -> bool:
    """A blob that stands for a folder: metadata hdi_isfolder=true (ADLS Gen2 and the tools that emulate it; any
    case of the key, as adlfs reads it) or adlfs's own is_directory=true."""
    return any(key.lower() in ("hdi_isfolder", "is_directory") and str(value).lower() == "true"
               for key, value in (metadata or {}).items())


class FsspecSource:
    """A container or bucket prefix through fsspec."""

    parallel_local = False  # network-bound: threads overlap the waits

    def __init__(self, url: str, *, cloud: CloudSettings | None = None, storage_options: dict | None = None,
                 what: str = "--site / [site] root"):
        """`cloud`: how az:// and s3:// roots sign in ([azure], [s3]; see sources/cloud.py). With
        `storage_options` the file system is fsspec's own, given exactly these options. `what`: where the root
        was given, named by its messages."""
        self.url = url
        self.what = what
        # A prefix with no object under it lists no files instead of failing: set by a run whose previous version had
        # files there, so that it is refused as a root that lists none (exit 5), as an emptied local folder is
        self.empty_ok = False
        self.description = self.location = mask_url(url)  # (spelt as one root by open_source: urls.root_url)
        self._blob_client = None  # Azure: the sync Blob service client of downloads, made on first use
        self._whole_root_gone: str | None = None  # whole_root_gone(): "" when the root is there
        self._checked = False  # check() found the root there: a run's later check() asks the storage no more
        self._vanished = False  # a listed object was not there when read (gone_since_listing asks only then)
        if storage_options is not None:
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
            self.how = "the storage options given"
        else:
            try:
                self.fs, root, self.how = cloud_access.filesystem_for(url, cloud)
            except ChorusError:
                raise
            except cloud_access.storage_errors() as exc:
                raise cloud_access.explain(exc, where=self.description, how="(signing in)", action="open") from None
        self.root = root.rstrip("/")

    @property
    def server_md5(self) -> bool:
        """Azure Blob and S3 list an MD5 (where they hold one) and an etag per object."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return any(p in _SERVER_MD5_PROTOCOLS for p in protocols)

    def _path(self, srcfile: str) -> str:
        return f"{self.root}/{srcfile}" if self.root else srcfile

    def check(self) -> None:
        """The root can be listed: a SourceError that says what to do if not (retried while transient). Asked once per
        source: a run checks its roots before its `runs` row and again as its scan starts (scan() may be called
        alone), which sent the same one-object listing twice; a root gone since is found by list_files, which asks
        again (_check_now) when its listing holds no file."""
        if not self._checked:
            self._check_now()

    def _check_now(self) -> None:
        try:
            ok = cloud_access.retrying(lambda: cloud_access.root_exists(self.fs, self.root)) if self.root else True
        except cloud_access.storage_errors() as exc:
            raise cloud_access.explain(exc, where=self.description, how=self.how, action="reach",
                                       endpoint=cloud_access.endpoint_of(self.fs), sas_permissions=self._sas) from None
        if isinstance(ok, str) and ok.startswith("not_s3"):
            raise cloud_access.not_an_s3_service(ok, where=self.description, how=self.how)
        if ok is not True:
            error = cloud_access.missing_root(self.fs, self.root, where=self.description, how=self.how,
                                              known_top_missing=ok == "no_container", what=self.what)
            if not (self.empty_ok and getattr(error, "kind", None) == "empty_prefix"):
                raise error
            return
        self._checked = True

    def changed_during_run(self, why: str) -> SourceError:
        """The failure of a run whose root stopped being the prefix it listed (`why`: what it is now): exit 3, nothing
        committed, as a local root renamed or removed while a run lists and hashes it (pipeline._check_roots_stayed)."""
        subject = "site root" if self.what.startswith("--site") else f"root of {self.what}"
        error = SourceError(
            f"the {subject} {self.description} {why}: it changed while this run listed and hashed it (its objects "
            "deleted or moved away meanwhile)", where=self.description,
            fix="nothing was committed and the previous version stays as it was: put the site's files back under "
                f"{self.description.rstrip('/')}/ (or give --site the place they are in now), then run again when "
                "nothing is deleting or moving them")
        error.kind = "changed_during_run"  # type: ignore[attr-defined]
        return error

    def gone_since_listing(self) -> str | None:
        """Why the root is no longer there as the prefix this run listed (None: it is, or nothing listed was found
        gone): every object under it deleted, or replaced by one object named like the root, while the run went on.
        Asked (one listing of one key) only when a listed object was not there when read: each file was recorded
        `vanished` and a version committed, its files all removed or still as before, from a root that was gone."""
        if not self._vanished or "/" not in self.root.strip("/"):
            return None
        try:
            state = cloud_access.root_exists(self.fs, self.root)
        except cloud_access.storage_errors():
            return None  # (each read said why)
        if state is True:
            return None
        if state == "no_container":
            return None  # (a container or bucket deleted fails the reads themselves, with its own words)
        error = cloud_access.missing_root(self.fs, self.root, where=self.description, how=self.how, what=self.what)
        if getattr(error, "kind", None) == "missing_root":
            return "is now " + error.what.partition(" is ")[2]
        return "has no object under it any more"

    def whole_root_gone(self) -> str | None:
        """Why the root is not there as a whole, for a check that must read its files (sources.local.root_gone): a
        prefix with no object under it (an object store keeps no empty folder: the site moved, or all of it was
        removed). None when it is there, is a whole container or bucket (whose absence each read says), or the
        storage could not be asked (each read says why). Asked once per source (one listing of one object)."""
        if self._whole_root_gone is None:
            state: bool | str = True
            if "/" in self.root.strip("/"):
                try:
                    state = cloud_access.root_exists(self.fs, self.root)
                except cloud_access.storage_errors():
                    state = True
            self._whole_root_gone = (
                f"the root it is recorded under, {self.description}, has no object under it (an object store keeps "
                "no empty folder: the site moved, or all of its files were removed)" if state is False else "")
        return self._whole_root_gone or None

    def holds_a_file(self) -> bool:
        """Whether any object under the root is a file, not a folder marker: check() takes a prefix holding only its
        markers (`site/`, hdi_isfolder blobs) for a root that is there. Read until the first file, not the listing.
        (True where the store cannot be asked so: nothing is refused on a guess.)"""
        try:
            if self._azure_sign_in:
                container, _, prefix = self.root.partition("/")
                prefix = prefix.strip("/")
                client = cloud_access.sync_blob_service_client(self._azure_sign_in).get_container_client(container)
                return any(not (blob.name.endswith("/") or is_folder_blob(blob.metadata)) for blob in
                           client.list_blobs(name_starts_with=prefix + "/" if prefix else None, include=["metadata"]))
            if hasattr(self.fs, "call_s3"):
                bucket, _, prefix = self.root.strip("/").partition("/")
                token: dict[str, str] = {}
                while True:
                    page = self.fs.call_s3("list_objects_v2", Bucket=bucket, **({"Prefix": prefix + "/"} if prefix else {}),
                                           **token)
                    if any(not item["Key"].endswith("/") for item in page.get("Contents") or ()):
                        return True
                    if not page.get("IsTruncated"):
                        return False
                    token = {"ContinuationToken": page["NextContinuationToken"]}
        except cloud_access.storage_errors() as exc:
            raise cloud_access.explain(exc, where=self.description, how=self.how, action="list",
                                       endpoint=cloud_access.endpoint_of(self.fs), sas_permissions=self._sas) from None
        return True

    def list_files(self, errors: list[tuple[str, str, str]]) -> Iterator[pa.RecordBatch]:
        try:
            found, markers = cloud_access.retrying(self._azure_listing if self._azure_sign_in else self._fsspec_listing)
        except cloud_access.storage_errors() as exc:
            raise cloud_access.explain(exc, where=self.description, how=self.how, action="list",
                                       endpoint=cloud_access.endpoint_of(self.fs), sas_permissions=self._sas) from None
        # A folder marker that holds bytes is not silently dropped: no copy of the site could keep them. The root's
        # own marker (`export/` under s3://b/export) is named so, as './' and by its URL: it was listed by an empty
        # name ("    : a folder marker ..."), which said nothing of which object held the bytes.
        errors.extend((name or "./", "special_file",
                       (f"a folder marker (an object named like a folder) that holds {size} bytes" if name else
                        f"the root's own folder marker ({self.description.rstrip('/')}/, an object named like the "
                        f"root folder) holds {size} bytes")
                       + ": no file can have this name, so it is not tracked; move its bytes to a file name")
                      for name, size in markers if size)
        if size := self._root_named_object():
            name = self.root.rpartition("/")[2]
            errors.append((f"../{name}", "special_file",
                           f"an object named like the root itself, {self.description.rstrip('/')} (no '/' after it), "
                           f"holds {size} bytes: it is beside the root's folder, not in it, so it is not tracked; move "
                           f"its bytes to a file under {self.description.rstrip('/')}/ (or give the folder above as "
                           "the root)"))
        found = _pathless_left_out(found, errors)
        found = _folder_names_left_out(found, errors)
        if not found[0]:
            was_there = self._checked
            try:
                self._check_now()  # a root that vanished since check() is an error, never an empty site
            except ConfigError as exc:
                if not (was_there and getattr(exc, "kind", None) == "missing_root"):
                    raise
                # It was a folder when this run began (its check passed, its `runs` row written) and is a single object
                # now: the site changed while the run went on, not a --site to correct (it was exit 2, a usage error)
                raise self.changed_during_run("is now " + exc.what.partition(" is ")[2]) from None
        for start in range(0, len(found[0]), BATCH_ROWS):
            yield listing_batch(*(column[start:start + BATCH_ROWS] for column in found))

    def _root_named_object(self) -> int:
        """The size of an object named exactly like the root prefix (`site` of s3://b/site, beside `site/...`), which
        the listing of `site/` does not hold: it was silently left out. 0 when there is none, it is empty or it is an
        Azure folder blob (a folder marker, as `site/` is), or the root is a whole container or bucket. A listing of
        one object from the root's name: no key under that prefix sorts before the name itself."""
        container, _, prefix = self.root.strip("/").partition("/")
        if not prefix:
            return 0

        def first() -> int:
            if self._azure_sign_in:
                client = cloud_access.sync_blob_service_client(self._azure_sign_in).get_container_client(container)
                for blob in next(client.list_blobs(name_starts_with=prefix, include=["metadata"],
                                                   results_per_page=1).by_page(), ()):
                    return int(blob.size or 0) if blob.name == prefix and not is_folder_blob(blob.metadata) else 0
                return 0
            if hasattr(self.fs, "call_s3"):
                page = self.fs.call_s3("list_objects_v2", Bucket=container, Prefix=prefix, MaxKeys=1)
                for item in page.get("Contents") or ():
                    return int(item.get("Size") or 0) if item["Key"] == prefix else 0
            return 0

        try:
            return cloud_access.retrying(first)
        except cloud_access.storage_errors() as exc:
            raise cloud_access.explain(exc, where=self.description, how=self.how, action="list",
                                       endpoint=cloud_access.endpoint_of(self.fs), sas_permissions=self._sas) from None

    @property
    def _azure_sign_in(self):
        return getattr(self.fs, "chorus_sign_in", None)

    @property
    def _sas(self) -> str | None:
        """The SAS token's permissions (its sp=, no secret): a refusal names the ones it lacks (a token with 'l' only
        was asked for "read (r) and list (l)", as if it had neither)."""
        return getattr(self._azure_sign_in, "sas_permissions", None)

    def _fsspec_listing(self) -> tuple[tuple[list, ...], list[tuple[str, int]]]:
        """(paths, sizes, mtimes, stored MD5s, etags) through fsspec's find; and the folder markers (path, size)."""
        found = self.fs.find(self.root, detail=True, withdirs=False)
        prefix = self.root + "/" if self.root else ""
        server_md5 = self.server_md5
        columns: tuple[list, ...] = ([], [], [], [], [])
        paths, sizes, mtimes, md5s, etags = columns
        markers: list[tuple[str, int]] = []
        for path, info in found.items():
            if prefix and path == self.root:
                # find() of a prefix that is now one object (`site`, its `site/...` deleted since check()) gives that
                # object: it was listed as a file named `bucket/site`, and a run with every other file gone refused
                # as a mass removal (exit 5), or committed it with --max-delete all. Not under the root: the empty
                # listing's check says what the root is now (_root_named_object says so of one beside `site/...`).
                continue
            rel = path[len(prefix):] if prefix and path.startswith(prefix) else path.lstrip("/")
            # A key ending in '/' (the S3 console's "Create folder", s3fs's makedirs) is a folder marker:
            # no file a site could hold has that name, so it is skipped as Azure's listing does.
            if path.endswith("/") or info.get("type") == "directory":
                markers.append((rel, int(info.get("size") or 0)))
                continue
            paths.append(rel)
            sizes.append(int(info.get("size") or 0))
            mtimes.append(_mtime_ns(info))
            md5s.append(stored_md5(info) if server_md5 else None)
            etags.append(etag_of(info) if server_md5 else None)
        return columns, markers

    def _azure_listing(self) -> tuple[tuple[list, ...], list[tuple[str, int]]]:
        """The same columns straight from the Blob service's listing: adlfs's find spends about 0.6 ms
        a blob on its own bookkeeping, twice the listing itself (benchmarks/cloud_benchmark.py)."""
        container, _, prefix = self.root.partition("/")
        prefix = prefix.strip("/")
        client = cloud_access.sync_blob_service_client(self._azure_sign_in).get_container_client(container)
        skip = len(prefix) + 1 if prefix else 0
        columns: tuple[list, ...] = ([], [], [], [], [])
        paths, sizes, mtimes, md5s, etags = columns
        markers: list[tuple[str, int]] = []
        # With metadata: a folder made by azcopy, Storage Explorer, Data Factory or the ADLS Gen2 API is a
        # blob carrying hdi_isfolder=true (adlfs's is_directory=true), named like the folder, without '/'.
        for blob in client.list_blobs(name_starts_with=prefix + "/" if prefix else None, include=["metadata"]):
            if blob.name.endswith("/") or is_folder_blob(blob.metadata):  # a folder marker, not a file
                markers.append((blob.name[skip:], int(blob.size or 0)))
                continue
            paths.append(blob.name[skip:])
            sizes.append(int(blob.size or 0))
            mtimes.append(clamp_ns(int(blob.last_modified.timestamp() * 1_000_000_000)) if blob.last_modified else 0)
            # (an append or page blob's Content-MD5 is not kept up to date by its writes: downloaded, as one without)
            raw = blob.content_settings.content_md5 if blob.content_settings and holds_its_md5(blob.blob_type) else None
            md5s.append(bytes(raw).hex() if raw and len(raw) == 16 else None)
            etags.append(str(blob.etag).strip('"') if blob.etag else None)
        return columns, markers

    def _storage_failure(self, exc: BaseException, srcfile: str) -> BaseException:
        """A failed call for one object: gone or forbidden is that file's problem (recorded like a local
        file's, the run goes on); a lost connection or sign-in fails the run with what to do."""
        if cloud_access.archived(exc):  # one object's state (the run goes on), not a failure of the storage
            return cloud_access.Archived()
        kind = cloud_access.classify(exc)
        # The service saying the container or bucket itself is gone fails the run: every file would otherwise be
        # recorded as "disappeared" and a version committed from a listing of a container that no longer exists.
        gone = kind == "other" and isinstance(exc, FileNotFoundError)  # (s3fs's, of a key: its bare path)
        if gone or (kind == "missing" and not cloud_access.store_gone(exc)):
            return _gone(srcfile)
        if kind == "permission":  # (with what to ask for: a hash records it as the file's error, as it is)
            fix = cloud_access.explain(exc, where=self.description, how=self.how, action="read",
                                       sas_permissions=self._sas).fix
            lacking = cloud_access.sas_lacking(self._sas, False)
            return PermissionError(f"not allowed to read {srcfile}" + (
                f" (the SAS token allows only '{self._sas}', its sp=: it lacks {lacking})" if lacking else "")
                + f" [signed in with {self.how}]: {fix}")
        if kind == "other" and isinstance(exc, OSError):
            return exc
        return cloud_access.explain(exc, where=f"{self.description}/{srcfile}", how=self.how, action="read",
                                    endpoint=cloud_access.endpoint_of(self.fs))

    def _not_an_object(self, srcfile: str) -> OSError:
        """A listed file whose path is now a folder. In a bucket or container that is an object deleted while keys under
        its name are there (`x.dat/part`): it is gone, as the Azure source says of it (its Blob service has no
        folders); a file system's folder is one (IsADirectoryError)."""
        return _gone(srcfile) if self.server_md5 else IsADirectoryError(errno.EISDIR, "not a file", srcfile)

    def _blob(self, srcfile: str) -> Any:
        container, _, name = self._path(srcfile).partition("/")
        return self._blob_service().get_blob_client(container, name)

    # Azure by the Blob service itself, as listed and hashed: adlfs parses a path as a URL, which drops
    # tabs and newlines from a name (a blob the listing found would then be "gone"). (Such names are never
    # sent centrally, see submit/central.py check_names, so open() through adlfs is not affected.)
    def stat(self, srcfile: str) -> FileStat:
        try:
            return self._stat(srcfile)
        except FileNotFoundError:
            self._vanished = True
            raise

    def _stat(self, srcfile: str) -> FileStat:
        if self._azure_sign_in is not None:
            try:
                props = self._blob(srcfile).get_blob_properties()
            except cloud_access.storage_errors() as exc:
                if type(exc).__name__ == "ResourceNotFoundError" and not cloud_access.store_gone(exc):
                    raise _gone(srcfile) from None  # BlobNotFound: that file is gone, as a local one
                raise self._storage_failure(exc, srcfile) from None
            mtime = clamp_ns(int(props.last_modified.timestamp() * 1_000_000_000)) if props.last_modified else 0
            return FileStat(int(props.size or 0), mtime, str(props.etag).strip('"') if props.etag else None,
                            archived=str(props.blob_tier or "").lower() == "archive")
        try:
            info = self.fs.info(self._path(srcfile))
        except cloud_access.storage_errors() as exc:
            raise self._storage_failure(exc, srcfile) from None
        if info.get("type") == "directory":
            raise self._not_an_object(srcfile)
        return FileStat(int(info.get("size") or 0), _mtime_ns(info), etag_of(info) if self.server_md5 else None)

    def open(self, srcfile: str) -> BinaryIO:
        if self._azure_sign_in is not None and _URL_DROPPED.search(srcfile):
            return self._open_blob(srcfile)
        try:
            return self.fs.open(self._path(srcfile), "rb", block_size=DOWNLOAD_BLOCK)
        except cloud_access.storage_errors() as exc:
            raise self._storage_failure(exc, srcfile) from None

    def _open_blob(self, srcfile: str) -> BinaryIO:
        """A blob whose name adlfs cannot open (a tab or line break: it parses the path as a URL, which drops them, and
        said of a blob just listed "no such object ... it is gone"), read through the Blob service, as it is hashed."""
        blob = self._blob(srcfile)
        try:
            props = blob.get_blob_properties()
        except cloud_access.storage_errors() as exc:
            if type(exc).__name__ == "ResourceNotFoundError" and not cloud_access.store_gone(exc):
                raise _gone(srcfile) from None
            raise self._storage_failure(exc, srcfile) from None
        ranges = _BlobRanges(blob, int(props.size or 0), props.etag, srcfile)
        return io.BufferedReader(ranges, DOWNLOAD_BLOCK)  # type: ignore[return-value]

    def hash_file(self, srcfile: str, buffer: bytearray, parse: Parse | None = None) -> HashOutcome:
        try:
            return self._hash_file(srcfile, buffer, parse)
        except FileNotFoundError:
            self._vanished = True
            raise

    def _hash_file(self, srcfile: str, buffer: bytearray, parse: Parse | None = None) -> HashOutcome:
        try:  # a dropped connection or a busy service: the whole file again, with backoff
            return cloud_access.retrying(lambda: self._hash(srcfile, buffer, parse))
        except FileChangedWhileHashing:
            raise
        except cloud_access.storage_errors() as exc:
            raise self._storage_failure(exc, srcfile) from None

    def _blob_service(self):
        """One synchronous Blob service client per source (its HTTP session is shared by the threads)."""
        if self._blob_client is None:
            self._blob_client = cloud_access.sync_blob_service_client(self._azure_sign_in)
        return self._blob_client

    def _hash_blob(self, srcfile: str, parse: Parse | None = None) -> HashOutcome:
        """One Get Blob for a small blob (adlfs's open costs three round trips before the bytes); a large
        one in ranged GETs of DOWNLOAD_BLOCK, each conditional on the first response's etag, so a blob
        written while it is read fails the read (ResourceModifiedError) instead of mixing two contents."""
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        container, _, name = self._path(srcfile).partition("/")
        digest = hashlib.md5(usedforsecurity=False)
        total, facts = 0, None
        try:
            # decompress=False: the blob's bytes as stored. With a Content-Encoding (gzip, deflate: set by upload tools
            # on .gz files) the SDK hands out the decoded bytes by default, whose size is not the blob's: every run
            # called such a blob "changed while hashing" and never recorded it (and its MD5 would not be the bytes')
            stream = self._blob_service().get_blob_client(container, name).download_blob(max_concurrency=1,
                                                                                          decompress=False)
            if parse is not None:  # the parser reads the downloaded chunks as they are hashed
                chunks = iter(stream.chunks())
                reader = HashingReader(lambda _n: next(chunks, b""), digest, int(stream.properties.size or 0))
                facts = parse_through(parse, reader)
                total = reader.finish()
            else:
                for chunk in stream.chunks():
                    digest.update(chunk)
                    total += len(chunk)
        except ResourceModifiedError:
            raise FileChangedWhileHashing(f"changed while hashing (its etag moved): {srcfile}") from None
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise
            raise _gone(srcfile) from None
        props = stream.properties
        if total != int(props.size or 0):
            raise FileChangedWhileHashing(f"size changed while hashing: {srcfile}")
        mtime = clamp_ns(int(props.last_modified.timestamp() * 1_000_000_000)) if props.last_modified else 0
        return HashOutcome(digest.digest(), total, mtime, facts, str(props.etag).strip('"') if props.etag else None)

    def _hash(self, srcfile: str, buffer: bytearray, parse: Parse | None = None) -> HashOutcome:
        if self._azure_sign_in is not None:
            return self._hash_blob(srcfile, parse)
        path = self._path(srcfile)
        info = self.fs.info(path)
        if info.get("type") == "directory":  # (read, it gave no bytes: an empty file, MD5 d41d8cd9..., of 1970)
            raise self._not_an_object(srcfile)
        size = int(info.get("size") or 0)
        digest = hashlib.md5(usedforsecurity=False)
        total, facts = 0, None
        # The info just asked for is handed to s3fs's file (its size and `details`), or it asks for it twice more:
        # a HEAD in open and one for its ranged GETs (4 requests an object read, now 3). The HEAD after the read
        # (not s3fs's If-Match, which it sends only when it looked the size up itself) says if it was written since.
        s3 = "ETag" in info and self.server_md5
        with self.fs.open(path, "rb", block_size=DOWNLOAD_BLOCK, **({"size": size} if s3 else {})) as f:
            if s3:
                f.details = info
            if parse is not None:  # the parser reads the bytes as they are hashed
                reader = HashingReader(f.read, digest, size)
                facts = parse_through(parse, reader)
                total = reader.finish(len(buffer))
            total = hash_rest(f.readinto, buffer, digest, total)
        if total != size:
            raise FileChangedWhileHashing(f"size changed while hashing: {srcfile}")
        if self.server_md5:  # written while it was read: the etag moved (a local file's mtime would have)
            after = self.fs.info(path)
            if etag_of(after) != etag_of(info) or int(after.get("size") or 0) != total:
                raise FileChangedWhileHashing(f"changed while hashing (its etag moved): {srcfile}")
        return HashOutcome(digest.digest(), total, _mtime_ns(info), facts, etag_of(info) if self.server_md5 else None)


class _BlobRanges(io.RawIOBase):
    """A blob's bytes as stored, seekable (a DICOM reader seeks), in ranged GETs each conditional on the etag seen at
    open: a blob written while it is read fails the read, never mixes two contents."""

    def __init__(self, blob: Any, size: int, etag: str | None, srcfile: str):
        self._blob, self._size, self._etag, self._srcfile, self._pos = blob, size, etag, srcfile, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = max(0, {0: 0, 1: self._pos, 2: self._size}[whence] + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError

        wanted = min(len(buffer), self._size - self._pos)
        if wanted <= 0:
            return 0
        try:
            data = self._blob.download_blob(offset=self._pos, length=wanted, max_concurrency=1, decompress=False,
                                            **({"etag": self._etag, "match_condition": MatchConditions.IfNotModified}
                                               if self._etag else {})).readall()
        except ResourceModifiedError:
            raise OSError(f"written while it was read (its etag moved): {self._srcfile}") from None
        except cloud_access.storage_errors() as exc:
            raise cloud_access.read_error(exc, self._srcfile) from None
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _gone(srcfile: str) -> FileNotFoundError:
    """An object that is not there (any more), with the reason a local file's error gives in its strerror: what a
    failed read says (validation's file.unread) was s3fs's bare "bucket/prefix/path", or "gone: path", no reason."""
    return FileNotFoundError(errno.ENOENT, "no such object (deleted or renamed since it was listed)", srcfile)


# An empty part ('a//b', a leading '/'), or a part '.' or '..': a name no file system keeps (a copy of the site holds
# it under another file's name, or not at all), which was tracked as given and never sent ("bad_name" at upload).
_NO_PATH = r"(^|/)\.{0,2}(/|$)"


def _folder_names_left_out(found: tuple[list, ...], errors: list[tuple[str, str, str]]) -> tuple[list, ...]:
    """The listing's columns less the empty objects named like the folder of other objects (`a/b` beside `a/b/c.dat`):
    folder markers, as some tools make them without '/' or hdi_isfolder, left out as the others are. One that holds
    bytes is data: tracked, uploaded and verified under its name, as an object store keeps it, and named by validation
    (file.name_clash: a copy of the site on a disk keeps one of the two). `errors` is not added to."""
    paths, sizes = found[0], found[1]
    if all(sizes):  # (no empty object, as in nearly every listing: the folders of a million names are not worked out)
        return found
    folders: set[str] = set()
    for path in paths:
        cut = path.rfind("/")
        while cut > 0:
            folder = path[:cut]
            if folder in folders:
                break
            folders.add(folder)
            cut = path.rfind("/", 0, cut)
    drop = {i for i, path in enumerate(paths) if not sizes[i] and path in folders}
    if not drop:
        return found
    return tuple([value for i, value in enumerate(column) if i not in drop] for column in found)


def _pathless_left_out(found: tuple[list, ...], errors: list[tuple[str, str, str]]) -> tuple[list, ...]:
    """The listing's columns less the objects whose name is no path (_NO_PATH), each recorded in `errors`."""
    import polars as pl

    bad = pl.Series(found[0], dtype=pl.String).str.contains(_NO_PATH)
    if not bad.any():
        return found
    errors.extend((name, "special_file", "an object whose name has an empty part ('//'), or a part '.' or '..', which "
                   "no file system keeps (a copy of the site would hold it under another name, or not at all): not "
                   "tracked; rename the object") for name in pl.Series(found[0]).filter(bad).to_list())
    keep = (~bad).to_list()
    return tuple([value for value, kept in zip(column, keep) if kept] for column in found)
