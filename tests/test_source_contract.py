"""The contract every Source implementation passes (as rclone's fstests do for its backends).

Each test runs once per implementation, on the same small tree built from a dict path -> bytes:

  local          LocalSource, walking in-process
  local-workers  LocalSource(workers=2, inprocess_budget_s=0): every top-level folder is walked
                 by worker processes
  local-early    LocalSource(workers=2) whose every listing takes a walk started before it (walk.py's
                 early listing, as the command line starts one while its libraries load)
  fsspec-memory  FsspecSource("memory://<unique>/site"), fsspec's in-memory file system
  fsspec-file    FsspecSource("file://<folder>"), fsspec's local file system (open_source would
                 give a LocalSource for a file:// URL, so it is built directly)
  memory-md5     FsspecSource over memory:// whose listing carries the MD5 the storage holds
                 (server_md5 = True), as Azure's Content-MD5 does
  azurite        FsspecSource("az://<container>/site") on a real Azurite (tests/services.py),
                 signed in with a connection string from the environment; blobs uploaded with
                 Content-MD5 except those under 000002/ (in blocks: none stored)
  s3-moto        FsspecSource("s3://<bucket>/site") on moto's S3 server; single-part uploads, so
                 every ETag is the MD5

Where an implementation differs for a principled reason, it is said in IMPLS, not skipped:
`mtime` says what its mtime_ns is measured against. fsspec's memory file system keeps no
modification time; FsspecSource reports its creation time ('created'), which is > 0 and stable
while the object is not rewritten. fsspec's local file system gives mtime as float seconds, so
its mtime_ns is within a microsecond of the OS's st_mtime_ns rather than equal to it. A cloud
object's mtime is its last-modified time, set by the service.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from chorus_batch.errors import ChorusError
from chorus_batch.frames import LISTING_SCHEMA
from chorus_batch.sources import FsspecSource, LocalSource, Source, mask_url, open_source
from chorus_batch.sources.base import FileStat, HashOutcome
from chorus_batch.sources.remote import stored_md5
from chorus_batch.workers import hash_one

from conftest import write

BUFFER = 64 * 1024
_BIG = hashlib.shake_256(b"chorus contract").digest(200 * 1024)  # 200 KiB, larger than the buffer

TREE: dict[str, bytes] = {
    "OMOP/person.csv": b"person_id,year_of_birth\n1,1970\n",
    "Metadata/site_description.json": b'{"site": "test"}',
    "README.txt": b"root file",
    "000001/Waveforms/000001_20200101_101010_60.dat": bytes(range(256)) * 3,
    "000001/Images/ST1/SE1/000001_20200101_101010_CT_SE1_1.dcm": b"\x00" * 1000,
    "000002/Waveforms/empty.dat": b"",
    "000002/big.bin": _BIG,
    "000002/exactly_one_buffer.bin": _BIG[:BUFFER],
    "000002/one_buffer_plus_one.bin": _BIG[:BUFFER + 1],
}

LONG_NAME = "L" * 196 + ".txt"  # 200 characters
ODD: dict[str, bytes] = {
    "odd/with space.txt": b"space",
    "odd/" + unicodedata.normalize("NFC", "caf\u00e9.txt"): b"nfc e-acute",
    "odd/\u60a3\u8005\u30c7\u30fc\u30bf.csv": b"cjk",
    "odd/hash#1.txt": b"hash",
    "odd/pct%20x%.txt": b"percent",
    "odd/a&b.txt": b"ampersand",
    "odd/-leading-dash.txt": b"dash",
    f"odd/{LONG_NAME}": b"long",
    "a/b/c/d/e/f/g/h/deep.txt": b"eight folders deep",
    "dir with space/\u00e9/x#y.txt": b"odd top-level folder",
    "-dash-folder/file.txt": b"top-level folder with a leading dash",
}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------- implementations


class StoredMd5MemorySource(FsspecSource):
    """memory:// whose listing carries the MD5 the storage holds, as Azure Blob's Content-MD5 does."""

    server_md5 = True  # a capability declared by the class, as a backend would

    def __init__(self, url: str):
        super().__init__(url)

    def list_files(self, errors):
        for batch in super().list_files(errors):
            paths = batch.column("srcfile").to_pylist()
            held = [md5(self.fs.cat_file(self._path(p))) for p in paths]
            # an etag per object version: its content and creation time
            tags = [f"{h}.{t}" for h, t in zip(held, batch.column("mtime_ns").to_pylist(), strict=True)]
            yield batch.set_column(3, "stored_md5", pa.array(held, LISTING_SCHEMA.field("stored_md5").type)).set_column(
                4, "etag", pa.array(tags, LISTING_SCHEMA.field("etag").type))


class EarlyListedSource(LocalSource):
    """A LocalSource whose listing is handed over from an early listing of its root, as a `run`'s is."""

    def list_files(self, errors, tops=None):
        from chorus_batch.walk import early_listing, early_listing_since_ns

        with early_listing(self.root, follow_symlinks=self.follow_symlinks, workers=2) as early:
            yield from super().list_files(errors, tops)
            assert early is None or early_listing_since_ns() is None, "the listing did not take the early walk"


@dataclass(frozen=True)
class Impl:
    id: str
    # What mtime_ns is measured against: "os" equals os.stat's st_mtime_ns; "os_float" is within
    # a microsecond of it (fsspec's local file system reports float seconds); "created" is the
    # memory file system's creation time (it keeps no mtime), > 0 and stable.
    mtime: str
    memory: bool = False
    cloud: str | None = None  # "azurite" | "moto": a real service, started by tests/services.py


IMPLS = [
    Impl("local", "os"),
    Impl("local-workers", "os"),
    Impl("local-early", "os"),
    Impl("fsspec-memory", "created", memory=True),
    Impl("fsspec-file", "os_float"),
    Impl("memory-md5", "created", memory=True),
    Impl("azurite", "service", cloud="azurite"),
    Impl("s3-moto", "service", cloud="moto"),
]


def _cloud_source(impl: Impl, service, tmp_path: Path, store: str, tree: dict[str, bytes], name: str,
                  exists: bool) -> Built:
    """The tree uploaded under <store>/<name>/ (a new container or bucket per test); a missing root
    is a container or bucket that does not exist."""
    from services import upload_tree, upload_tree_s3

    if exists:
        local = tmp_path / f"upload-{name}"
        for rel, data in tree.items():
            write(local, rel, data)
        local.mkdir(exist_ok=True)
        if impl.cloud == "azurite":
            client = service.service_client()
            upload_tree(client, store, local, prefix=name)
            blocks = local / "000002"
            if blocks.is_dir():
                upload_tree(client, store, blocks, prefix=f"{name}/000002", blocks=True)
            if not tree:  # an empty root: an empty container still lists (nothing)
                return Built(FsspecSource(f"az://{store}"), impl, None)
        else:
            upload_tree_s3(service.client(), store, local, prefix=name)
            if not tree:
                return Built(FsspecSource(f"s3://{store}"), impl, None)
    else:
        store = f"missing-{uuid.uuid4().hex[:12]}"
    scheme = "az" if impl.cloud == "azurite" else "s3"
    return Built(FsspecSource(f"{scheme}://{store}/{name}"), impl, None)


@dataclass
class Built:
    source: Source
    impl: Impl
    disk: Path | None  # the folder on disk, for the implementations backed by one


def _build(impl: Impl, tmp_path: Path, memory_base: str, tree: dict[str, bytes], name: str, exists: bool) -> Built:
    if impl.memory:
        import fsspec

        fs = fsspec.filesystem("memory")
        root = f"/{memory_base}/{name}"
        if exists:
            fs.mkdir(root, create_parents=True)
            fs.pipe({f"{root}/{rel}": data for rel, data in tree.items()})
        cls = StoredMd5MemorySource if impl.id == "memory-md5" else FsspecSource
        return Built(cls(f"memory:/{root}"), impl, None)
    folder = tmp_path / name
    if exists:
        folder.mkdir()
        for rel, data in tree.items():
            write(folder, rel, data)
    if impl.id == "local":
        src: Source = LocalSource(folder)
    elif impl.id == "local-workers":
        src = LocalSource(folder, workers=2, inprocess_budget_s=0)
    elif impl.id == "local-early":
        src = EarlyListedSource(folder, workers=2)
    else:
        src = FsspecSource(folder.as_uri())
    return Built(src, impl, folder)


@pytest.fixture(params=IMPLS, ids=[i.id for i in IMPLS])
def make(request, tmp_path, monkeypatch) -> Iterator[Callable[..., Built]]:
    """make(tree, name="site", exists=True): the implementation under test over `tree`."""
    impl: Impl = request.param
    memory_base = f"chorus-contract-{uuid.uuid4().hex}"
    service, store = None, ""
    if impl.cloud == "azurite":
        service = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", service.connection_string)
        store = service.new_container()
    elif impl.cloud == "moto":
        service = request.getfixturevalue("moto_s3")
        for key, value in service.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", service.endpoint_url)
        store = service.new_bucket()

    def build(tree: dict[str, bytes] = TREE, name: str = "site", exists: bool = True) -> Built:
        if impl.cloud:
            return _cloud_source(impl, service, tmp_path, store, tree, name, exists)
        return _build(impl, tmp_path, memory_base, tree, name, exists)

    yield build
    if impl.memory:
        import fsspec

        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{memory_base}"):
            fs.rm(f"/{memory_base}", recursive=True)
        assert not [k for k in fs.store if k.startswith(f"/{memory_base}")]


@pytest.fixture
def built(make) -> Built:
    return make()


def listing(src: Source) -> tuple[pa.Table, list]:
    errors: list = []
    batches = list(src.list_files(errors))
    for batch in batches:
        assert isinstance(batch, pa.RecordBatch)
        assert batch.schema.equals(LISTING_SCHEMA)
    return pa.Table.from_batches(batches, schema=LISTING_SCHEMA), errors


def rows(src: Source) -> dict[str, dict]:
    table, errors = listing(src)
    assert errors == []
    out = {r["srcfile"]: r for r in table.to_pylist()}
    assert len(out) == table.num_rows, "a path is listed twice"
    return out


def os_mtime_ns(b: Built, rel: str) -> int:
    assert b.disk is not None
    return os.stat(b.disk.joinpath(*rel.split("/"))).st_mtime_ns


def assert_mtime(b: Built, rel: str, mtime_ns: int) -> None:
    assert mtime_ns > 0
    if b.impl.mtime == "os":
        assert mtime_ns == os_mtime_ns(b, rel)
    elif b.impl.mtime == "os_float":
        assert abs(mtime_ns - os_mtime_ns(b, rel)) <= 1_000
    else:
        assert b.impl.mtime in ("created", "service")


# ----------------------------------------------------------------------------- list


def test_listing_has_the_schema_and_exactly_the_tree(built):
    table, errors = listing(built.source)
    assert table.schema.equals(LISTING_SCHEMA)
    assert errors == []
    paths = table.column("srcfile").to_pylist()
    assert sorted(paths) == sorted(TREE)
    for p in paths:
        assert not p.startswith("/") and not p.endswith("/") and "\\" not in p and "//" not in p
        assert "./" not in p and not p.startswith("memory:") and not p.startswith("file:")
    for rel, row in rows(built.source).items():
        assert row["size"] == len(TREE[rel])
        assert_mtime(built, rel, row["mtime_ns"])


def test_stored_md5_is_null_unless_the_storage_holds_one(built):
    table, _ = listing(built.source)
    held = dict(zip(table.column("srcfile").to_pylist(), table.column("stored_md5").to_pylist(), strict=True))
    if not built.source.server_md5:
        assert set(held.values()) == {None}
    for rel, value in held.items():
        if value is not None:
            assert value == md5(TREE[rel])


def test_a_listing_with_stored_md5s_carries_an_etag_that_changes_with_the_object(make, tmp_path):
    b = make()
    table, _ = listing(b.source)
    etags = dict(zip(table.column("srcfile").to_pylist(), table.column("etag").to_pylist(), strict=True))
    if not b.source.server_md5:
        assert set(etags.values()) == {None}
        return
    assert all(etags.values()) and len(set(etags.values())) == len(etags)  # one per object, unquoted
    assert not any(e.startswith('"') for e in etags.values())
    b.source.fs.pipe_file(b.source._path("OMOP/person.csv"), b"person_id\n2\n")  # rewritten in place
    again, _ = listing(b.source)
    after = dict(zip(again.column("srcfile").to_pylist(), again.column("etag").to_pylist(), strict=True))
    assert after["OMOP/person.csv"] != etags["OMOP/person.csv"]
    assert after["README.txt"] == etags["README.txt"]


def test_an_empty_root_lists_no_rows(make):
    b = make({}, name="empty")
    b.source.check()
    table, errors = listing(b.source)
    assert table.num_rows == 0 and errors == []


# ----------------------------------------------------------------------------- stat


def test_stat_agrees_with_the_listing(built):
    for rel, row in rows(built.source).items():
        st = built.source.stat(rel)
        assert isinstance(st, FileStat)
        assert (st.size, st.mtime_ns) == (row["size"], row["mtime_ns"])


def test_stat_of_a_missing_path_raises_file_not_found(built):
    with pytest.raises(FileNotFoundError):
        built.source.stat("OMOP/no_such_file.csv")
    with pytest.raises(FileNotFoundError):
        built.source.stat("no_such_folder/x.dat")


# ----------------------------------------------------------------------------- open


def test_open_returns_the_bytes_and_is_seekable(built):
    for rel, data in TREE.items():
        with built.source.open(rel) as f:
            assert f.read() == data
            assert f.seekable()
            if data:
                f.seek(len(data) // 2)
                assert f.read() == data[len(data) // 2:]
                f.seek(0)
                assert f.read(1) == data[:1]


def test_open_of_a_missing_path_raises_oserror(built):
    with pytest.raises(OSError):
        built.source.open("OMOP/no_such_file.csv")


# ----------------------------------------------------------------------------- hash


@pytest.mark.parametrize("rel", ["OMOP/person.csv", "000002/Waveforms/empty.dat", "000002/big.bin",
                                 "000002/exactly_one_buffer.bin", "000002/one_buffer_plus_one.bin"])
def test_hash_is_the_md5_and_size(built, rel):
    out = built.source.hash_file(rel, bytearray(BUFFER))
    assert isinstance(out, HashOutcome)
    assert out.md5 == md5(TREE[rel]) and len(out.digest) == 16
    assert out.size == len(TREE[rel])
    assert out.mtime_ns == built.source.stat(rel).mtime_ns


def test_a_missing_file_is_said_to_be_missing_where_a_read_is_reported(built):
    """validate's file.unread quotes the read's error: a vanished S3 object said "cannot read the file:
    bucket/site/OMOP/x.csv" (s3fs's bare path), a vanished blob "cannot read the file: gone: OMOP/x.csv"; a local
    file says "No such file or directory". Every source's FileNotFoundError carries its reason."""
    from chorus_batch.validate.readers import read_facts

    for call in (built.source.stat, built.source.open):
        with pytest.raises(FileNotFoundError) as caught:
            call("OMOP/no_such_file.csv")
        assert caught.value.strerror and "no such" in caught.value.strerror.lower(), repr(caught.value)
    said = read_facts(built.source, "OMOP/no_such_file.csv", "omop_csv.v2")
    assert said["retry"] is True and "no such" in said["error"].lower(), said


def test_a_path_that_is_a_folder_is_no_file_to_stat_or_hash(built):
    """A listed file whose path is a folder by the time it is read (a local file replaced by a folder; an object deleted
    while keys under its name are there) raises OSError; the S3 source hashed it as an empty file, MD5 d41d8cd9... of
    1970. Where the storage has no folders (server_md5: a bucket, a container) the object is gone: FileNotFoundError."""
    for call in (built.source.stat, lambda rel: built.source.hash_file(rel, bytearray(BUFFER))):
        for folder in ("OMOP", "000001/Waveforms"):
            with pytest.raises(OSError) as caught:
                call(folder)
            if built.source.server_md5:
                assert isinstance(caught.value, FileNotFoundError), repr(caught.value)
    assert hash_one(built.source, "OMOP", bytearray(BUFFER))[0] in ("vanished", "unreadable")


def test_hash_one_reports_a_missing_file_as_vanished(built):
    out = hash_one(built.source, "OMOP/no_such_file.csv", bytearray(BUFFER))
    assert isinstance(out, tuple) and out[0] == "vanished"


def test_a_source_that_runs_in_worker_processes_pickles(built):
    """parallel_local sources are sent to worker processes (hashing.hash_files): they must pickle
    and hash the same on the other side."""
    if not built.source.parallel_local:
        return  # used from threads only: no requirement
    copy = pickle.loads(pickle.dumps(built.source))
    assert copy.hash_file("000002/big.bin", bytearray(BUFFER)).md5 == md5(_BIG)


# ----------------------------------------------------------------------------- errors


def test_check_names_the_fix_for_a_missing_root(make):
    b = make(name="missing", exists=False)
    with pytest.raises(ChorusError) as caught:
        b.source.check()
    assert caught.value.fix
    assert caught.value.where


def test_check_passes_on_a_tree(built):
    built.source.check()


# ----------------------------------------------------------------------------- odd names


def test_odd_names_round_trip_under_the_same_srcfile(make):
    b = make(ODD, name="odd")
    listed = rows(b.source)
    assert sorted(listed) == sorted(ODD)
    for rel, data in ODD.items():
        assert listed[rel]["size"] == len(data)
        assert b.source.stat(rel).size == len(data)
        with b.source.open(rel) as f:
            assert f.read() == data
        assert b.source.hash_file(rel, bytearray(BUFFER)).md5 == md5(data)
    assert unicodedata.is_normalized("NFC", next(p for p in listed if "caf" in p))


# ----------------------------------------------------------------------------- capabilities


def test_capabilities_and_description(built):
    src = built.source
    assert isinstance(src, Source)
    assert isinstance(src.description, str) and src.description
    assert isinstance(src.location, str) and src.location
    assert isinstance(src.parallel_local, bool) and isinstance(src.server_md5, bool)
    if built.disk is not None:  # a local folder is recorded as its POSIX path or file:// URL
        assert built.disk.as_posix() in src.location


def test_locations_never_hold_a_secret(tmp_path):
    sas = "sv=2022-11-02&ss=b&sp=rl&se=2030-01-01&sig=SECRET%2Bvalue"
    assert "SECRET" not in mask_url(f"https://acct.blob.core.windows.net/site?{sas}")
    assert "SECRET" not in mask_url(f"az://container/site?{sas}")
    assert mask_url("abfs://user:SECRET@container/site") == "abfs://***@container/site"
    assert mask_url("az://container/site") == "az://container/site"  # nothing to hide: unchanged
    for src in (FsspecSource(f"memory://chorus-contract-{uuid.uuid4().hex}/site?{sas}"),
                FsspecSource(f"az://container/site?{sas}", storage_options={"account_name": "acct"})):
        assert isinstance(src, Source)
        assert "SECRET" not in src.location and "SECRET" not in src.description
    assert FsspecSource("az://container/site", storage_options={"account_name": "acct"}).server_md5 is True
    assert isinstance(open_source(tmp_path.as_uri()), LocalSource)
    assert isinstance(open_source("memory://x/site"), FsspecSource)


def test_stored_md5_reads_azure_content_md5():
    digest = hashlib.md5(b"blob").digest()
    import base64

    b64 = base64.b64encode(digest).decode()
    assert stored_md5({"content_settings": {"content_md5": b64}}) == digest.hex()
    assert stored_md5({"content_settings": {"content_md5": bytearray(digest)}}) == digest.hex()

    class Settings:
        content_md5 = digest

    assert stored_md5({"content_settings": Settings()}) == digest.hex()
    assert stored_md5({}) is None
    assert stored_md5({"content_settings": {"content_md5": None}}) is None
    assert stored_md5({"content_settings": {"content_md5": "not base64!"}}) is None
    assert stored_md5({"content_settings": {"content_md5": base64.b64encode(b"short").decode()}}) is None
    # an append or page blob's Content-MD5 is not kept up to date by its writes: never taken as its MD5
    assert stored_md5({"content_settings": {"content_md5": b64}, "blob_type": "BlockBlob"}) == digest.hex()
    assert stored_md5({"content_settings": {"content_md5": b64}, "blob_type": "AppendBlob"}) is None
    assert stored_md5({"content_settings": {"content_md5": b64}, "blob_type": "PageBlob"}) is None
