#!/usr/bin/env python3
"""Benchmark chorus_batch's Azure Blob path against the plain azure-storage-blob SDK, on Azurite.

The script starts its own Azurite (tests/services.py's `Azurite`, imported, not copied), uploads the
data with the SDK, and times, in the same invocation and on the same containers:

  listing     FsspecSource(az://...).list_files() fully consumed, and scan.list_roots() (the run's
              listing stage: the same plus the Arrow/polars frame), vs the sync SDK's
              ContainerClient.list_blobs() iterated to the end.                      (best of 3 each)
  no-change   chorus_batch.run() a second and third time on an unchanged container (the first run
              downloads the blobs that have no Content-MD5): wall time, n_hashed (asserted 0) and the
              bytes of Get Blob responses (counted in the Azure SDK, outside chorus), vs the SDK
              listing time, the least any tool must spend to know that nothing changed.
  download    MD5 of a few large block blobs without Content-MD5: chorus's hashing.hash_files over an
              FsspecSource (2 threads, as a run on 2 cores) and a whole `run --cloud-md5 download`,
              vs download_blob().chunks() + hashlib.md5 (one blob after another; and 2 threads, one
              blob each) and download_blob(max_concurrency=2).readinto(an in-order MD5 sink).

Everything runs on loopback against a Node.js emulator: the absolute figures say little about a real
storage account; the ratios compare two clients of the same server. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's chorus_batch, whatever the venv has installed
sys.path.insert(1, str(ROOT / "tests"))  # tests/services.py: Azurite (needs `npm ci`)

import polars as pl  # noqa: E402

import chorus_batch  # noqa: E402
from chorus_batch import RunSettings, run  # noqa: E402
from chorus_batch import hashing  # noqa: E402
from chorus_batch.progress import Progress  # noqa: E402
from chorus_batch.scan import Root, list_roots  # noqa: E402
from chorus_batch.sources import FsspecSource  # noqa: E402
from chorus_batch.sources import remote  # noqa: E402
from services import Azurite  # noqa: E402

MiB = 1 << 20
RESULTS = ROOT / "benchmarks" / "results"
SMALL_SIZE = 1024  # bytes per small blob
FILES_PER_FOLDER = 100
UPLOAD_THREADS = 8  # the SDK's connection pool holds 10
STAGE_BLOCK = 8 * MiB  # Put Block size of the large blobs
LIST_REPS = 3
DOWNLOAD_REPS = 2
CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")  # chorus's cloud.py passes either to the Azure SDK
HASH_THREADS = 2  # chorus's default on this 2-core machine (min(cpu_count, 16)); given explicitly


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- what the SDK downloaded


class DownloadCounter:
    """Counts the Get Blob calls of the SDK (sync and async clients: chorus downloads with the sync one,
    adlfs's reads use the async one) and the bytes they return: measured in the SDK, not taken from
    chorus's own counters."""

    def __init__(self) -> None:
        from azure.storage.blob import BlobClient
        from azure.storage.blob.aio import BlobClient as AsyncBlobClient

        self.classes = (BlobClient, AsyncBlobClient)
        self.originals = tuple(cls.download_blob for cls in self.classes)
        self.calls = 0
        self.bytes = 0
        self.lock = threading.Lock()

    def _count(self, downloader) -> None:
        with self.lock:
            self.calls += 1
            self.bytes += int(getattr(downloader, "size", 0) or 0)

    def __enter__(self) -> "DownloadCounter":
        sync_original, async_original = self.originals
        counter = self

        def download_blob(client, *args, **kwargs):
            downloader = sync_original(client, *args, **kwargs)
            counter._count(downloader)
            return downloader

        async def download_blob_async(client, *args, **kwargs):
            downloader = await async_original(client, *args, **kwargs)
            counter._count(downloader)
            return downloader

        self.classes[0].download_blob = download_blob
        self.classes[1].download_blob = download_blob_async
        return self

    def __exit__(self, *exc) -> None:
        for cls, original in zip(self.classes, self.originals):
            cls.download_blob = original


# ----------------------------------------------------------------------------- data


def small_names(n: int) -> list[str]:
    return [f"{i // FILES_PER_FOLDER:06d}/Waveforms/S{i // FILES_PER_FOLDER}/S{i // FILES_PER_FOLDER}_{i % FILES_PER_FOLDER:03d}.dat"
            for i in range(n)]


def upload_small(service, container: str, names: list[str]) -> None:
    """`SMALL_SIZE`-byte blobs, concurrently: the even ones with Content-MD5 (Put Blob with it), the odd
    ones without (Put Block + Put Block List: the service computes none for a block list)."""
    from azure.storage.blob import BlobBlock, ContentSettings

    client = service.get_container_client(container)

    def one(k: int) -> None:
        name = names[k]
        data = (name.encode() * (SMALL_SIZE // len(name) + 1))[:SMALL_SIZE]
        blob = client.get_blob_client(name)
        if k % 2 == 0:
            blob.upload_blob(data, overwrite=True,
                             content_settings=ContentSettings(content_md5=bytearray(hashlib.md5(data).digest())))
        else:
            blob.stage_block("b0", data)
            blob.commit_block_list([BlobBlock(block_id="b0")])

    with cf.ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for _ in pool.map(one, range(len(names))):
            pass


def upload_large(service, container: str, count: int, size: int) -> dict[str, str]:
    """`count` blobs of `size` random bytes in Put Blocks of 8 MiB, no Content-MD5. Returns name -> MD5 hex."""
    from azure.storage.blob import BlobBlock

    client = service.get_container_client(container)

    def one(k: int) -> tuple[str, str]:
        name = f"{900000 + k:06d}/Waveforms/L{k}/L{k}.dat"  # a path the site layout accepts
        blob = client.get_blob_client(name)
        digest = hashlib.md5()
        blocks = []
        for j, start in enumerate(range(0, size, STAGE_BLOCK)):
            data = os.urandom(min(STAGE_BLOCK, size - start))
            digest.update(data)
            block_id = f"blk-{j:06d}"
            blob.stage_block(block_id, data)
            blocks.append(BlobBlock(block_id=block_id))
        blob.commit_block_list(blocks)
        return name, digest.hexdigest()

    with cf.ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, range(count)))


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def interleaved(reps: int, named: dict[str, Callable[[], Any]]) -> dict[str, dict[str, Any]]:
    """Each function `reps` times, in turn (a, b, c, a, b, c, ...): {name: {"runs_s", "best_s", "result"}}."""
    out: dict[str, dict[str, Any]] = {name: {"runs_s": [], "result": None} for name in named}
    for _ in range(reps):
        for name, fn in named.items():
            seconds, result = timed(fn)
            out[name]["runs_s"].append(round(seconds, 4))
            out[name]["result"] = result
    for entry in out.values():
        entry["best_s"] = min(entry["runs_s"])
    return out


def sdk_list(service, container: str) -> int:
    return sum(1 for _ in service.get_container_client(container).list_blobs())


def chorus_list_files(url: str) -> int:
    errors: list = []
    return sum(batch.num_rows for batch in FsspecSource(url).list_files(errors))


def chorus_list_roots(url: str) -> int:
    listing, _errors = list_roots([Root(FsspecSource(url))], Progress(quiet=True))
    return listing.height


class Md5Sink:
    """A writable, seekable stream that hashes what is written to it in order. The SDK's parallel
    download (max_concurrency > 1) seeks to each chunk's offset before writing it; chunks that arrive
    early wait here (at most about max_concurrency chunks of 4 MiB)."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.done = 0  # bytes hashed so far
        self.pos = 0
        self.pending: dict[int, bytes] = {}
        self.peak_pending = 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data) -> int:
        self.pending[self.pos] = bytes(data)
        self.pos += len(data)
        while self.done in self.pending:
            chunk = self.pending.pop(self.done)
            self.md5.update(chunk)
            self.done += len(chunk)
        self.peak_pending = max(self.peak_pending, sum(len(c) for c in self.pending.values()))
        return len(data)


def sdk_chunks_md5(service, container: str, name: str) -> str:
    digest = hashlib.md5()
    for chunk in service.get_blob_client(container, name).download_blob(max_concurrency=1).chunks():
        digest.update(chunk)
    return digest.hexdigest()


def sdk_parallel_md5(service, container: str, name: str) -> str:
    sink = Md5Sink()
    service.get_blob_client(container, name).download_blob(max_concurrency=2).readinto(sink)
    assert not sink.pending, "chunks left unhashed"
    return sink.md5.hexdigest()


def chorus_hash_files(url: str, sizes: dict[str, int]) -> dict[str, str]:
    source = FsspecSource(url)
    todo = pl.DataFrame({"root_id": [0] * len(sizes), "srcfile": list(sizes), "size": list(sizes.values())},
                        schema={"root_id": pl.Int64, "srcfile": pl.String, "size": pl.Int64})
    hashed = hashing.hash_files([source], todo, workers=HASH_THREADS)
    if "error_kind" in hashed.columns and hashed["error_kind"].drop_nulls().len():
        raise RuntimeError(f"chorus failed to hash: {hashed.filter(pl.col('error_kind').is_not_null()).to_dicts()}")
    return {row["srcfile"]: row["md5"] if isinstance(row["md5"], str) else bytes(row["md5"]).hex()
            for row in hashed.select("srcfile", "md5").to_dicts()}


def chorus_run(url: str, db: Path, **overrides) -> Any:
    settings = RunSettings(site=url, db=str(db), validate_site=False, verify_sample=0, workers=HASH_THREADS,
                           **overrides)
    result = run(settings, argv=["benchmark"])
    if result.errors.height:
        raise RuntimeError(f"the run recorded problems: {result.errors.head(5).to_dicts()}")
    return result


def drop_manifest(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(db) + suffix).unlink()


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


# ----------------------------------------------------------------------------- the three measurements


def measure_listing(service, container: str, n: int) -> dict[str, Any]:
    url = f"az://{container}"
    timings = interleaved(LIST_REPS, {
        "sdk_list_blobs": lambda: sdk_list(service, container),
        "chorus_list_files": lambda: chorus_list_files(url),
        "chorus_list_roots": lambda: chorus_list_roots(url),
    })
    for name, entry in timings.items():
        if entry["result"] != n:
            raise RuntimeError(f"{name} listed {entry['result']} blobs, not {n}")
        entry["blobs_per_s"] = round(rate(n, entry["best_s"]), 1)
    sdk = timings["sdk_list_blobs"]["blobs_per_s"]
    return {"blobs": n, "timings": timings,
            "list_files_vs_sdk": round(timings["chorus_list_files"]["blobs_per_s"] / sdk, 3),
            "list_roots_vs_sdk": round(timings["chorus_list_roots"]["blobs_per_s"] / sdk, 3)}


def measure_nochange(service, container: str, n: int, workdir: Path, sdk_list_s: float) -> dict[str, Any]:
    url = f"az://{container}"
    db = workdir / "nochange.sqlite"
    drop_manifest(db)
    with DownloadCounter() as first_dl:
        first_s, first = timed(lambda: chorus_run(url, db))
    log(f"first run: {first_s:.2f} s, hashed {first.n_hashed:,} files, {first_dl.calls:,} Get Blob calls")
    expected_downloads = n // 2  # the odd-numbered blobs have no Content-MD5
    if first.n_hashed != expected_downloads:
        raise RuntimeError(f"the first run hashed {first.n_hashed} blobs, expected {expected_downloads}")
    runs = []
    for _ in range(2):
        with DownloadCounter() as dl:
            wall_s, result = timed(lambda: chorus_run(url, db))
        runs.append({"wall_s": round(wall_s, 4), "elapsed_s": result.elapsed_s, "timings": result.timings,
                     "n_hashed": result.n_hashed, "bytes_hashed": result.bytes_hashed,
                     "get_blob_calls": dl.calls, "bytes_downloaded": dl.bytes})
        assert result.n_hashed == 0, f"a no-change run hashed {result.n_hashed} files"
        assert dl.calls == 0 and dl.bytes == 0, f"a no-change run downloaded {dl.bytes} bytes in {dl.calls} calls"
    best = min(runs, key=lambda r: r["wall_s"])
    drop_manifest(db)
    return {"blobs": n,
            "first": {"wall_s": round(first_s, 4), "elapsed_s": first.elapsed_s, "timings": first.timings,
                      "n_hashed": first.n_hashed, "bytes_hashed": first.bytes_hashed,
                      "get_blob_calls": first_dl.calls, "bytes_downloaded": first_dl.bytes},
            "nochange_runs": runs, "nochange_best": best, "sdk_list_s": sdk_list_s,
            "nochange_vs_sdk_list": round(best["wall_s"] / sdk_list_s, 3)}


def measure_download(service, container: str, expected: dict[str, str], size: int, workdir: Path) -> dict[str, Any]:
    url = f"az://{container}"
    names = sorted(expected)
    total = size * len(names)
    db = workdir / "download.sqlite"

    def seq() -> dict[str, str]:
        return {name: sdk_chunks_md5(service, container, name) for name in names}

    def threads2() -> dict[str, str]:
        with cf.ThreadPoolExecutor(HASH_THREADS) as pool:
            return dict(zip(names, pool.map(lambda nm: sdk_chunks_md5(service, container, nm), names)))

    def par2() -> dict[str, str]:
        return {name: sdk_parallel_md5(service, container, name) for name in names}

    def chorus_hash() -> dict[str, str]:
        return chorus_hash_files(url, {name: size for name in names})

    def chorus_download_run() -> dict[str, Any]:
        drop_manifest(db)
        with DownloadCounter() as dl:
            result = chorus_run(url, db, cloud_md5="download")
        drop_manifest(db)
        if result.bytes_hashed != total:
            raise RuntimeError(f"run --cloud-md5 download hashed {result.bytes_hashed} bytes, not {total}")
        return {"n_hashed": result.n_hashed, "hash_s": result.hash_s, "get_blob_calls": dl.calls,
                "bytes_downloaded": dl.bytes}

    timings = interleaved(DOWNLOAD_REPS, {
        "sdk_chunks_sequential": seq,
        "sdk_chunks_2_threads": threads2,
        "sdk_readinto_max_concurrency_2": par2,
        "chorus_hash_files": chorus_hash,
        "chorus_run_cloud_md5_download": chorus_download_run,
    })
    for name, entry in timings.items():
        if name != "chorus_run_cloud_md5_download" and entry["result"] != expected:
            raise RuntimeError(f"{name}: wrong MD5s")
        entry["mb_per_s"] = round(rate(total / 1e6, entry["best_s"]), 1)
    run_entry = timings["chorus_run_cloud_md5_download"]
    run_entry["detail"] = run_entry.pop("result")
    for entry in timings.values():
        entry.pop("result", None)
    sdk_best_name = max((k for k in timings if k.startswith("sdk_")), key=lambda k: timings[k]["mb_per_s"])
    sdk_best = timings[sdk_best_name]["mb_per_s"]
    return {"blobs": len(names), "blob_mib": size // MiB, "total_bytes": total, "timings": timings,
            "sdk_best": sdk_best_name,
            "hash_files_vs_sdk_best": round(timings["chorus_hash_files"]["mb_per_s"] / sdk_best, 3),
            "hash_files_vs_sdk_2_threads": round(timings["chorus_hash_files"]["mb_per_s"]
                                                 / timings["sdk_chunks_2_threads"]["mb_per_s"], 3),
            "run_vs_sdk_best": round(run_entry["mb_per_s"] / sdk_best, 3),
            "download_block": remote.DOWNLOAD_BLOCK}


# ----------------------------------------------------------------------------- report


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def report(out: dict[str, Any]) -> str:
    lines: list[str] = []
    if "listing" in out:
        li = out["listing"]
        sdk = li["timings"]["sdk_list_blobs"]["blobs_per_s"]
        lines += [f"1. listing {li['blobs']:,} blobs (best of {LIST_REPS}, interleaved)", table(
            ["what", "best s", "runs s", "blobs/s", "vs SDK"],
            [[name, f"{e['best_s']:.3f}", " ".join(f"{s:.3f}" for s in e["runs_s"]), f"{e['blobs_per_s']:,.0f}",
              f"{e['blobs_per_s'] / sdk:.2f}x"] for name, e in li["timings"].items()]), ""]
    if "nochange" in out:
        nc = out["nochange"]
        rows = [["first run", f"{nc['first']['wall_s']:.3f}", f"{nc['first']['n_hashed']:,}",
                 f"{nc['first']['get_blob_calls']:,}", f"{nc['first']['bytes_downloaded']:,}", "-"]]
        rows += [[f"no-change run {k + 1}", f"{r['wall_s']:.3f}", f"{r['n_hashed']:,}", f"{r['get_blob_calls']:,}",
                  f"{r['bytes_downloaded']:,}", f"{r['wall_s'] / nc['sdk_list_s']:.2f}x"]
                 for k, r in enumerate(nc["nochange_runs"])]
        rows.append(["SDK list_blobs (best)", f"{nc['sdk_list_s']:.3f}", "-", "-", "-", "1.00x"])
        lines += [f"2. no-change run on {nc['blobs']:,} blobs (half without Content-MD5)", table(
            ["what", "wall s", "hashed", "Get Blob calls", "bytes downloaded", "vs SDK list"], rows),
            f"   no-change stage seconds: {nc['nochange_best']['timings']}", ""]
    if "download" in out:
        d = out["download"]
        lines += [f"3. download + MD5 of {d['blobs']} x {d['blob_mib']} MiB block blobs without Content-MD5 "
                  f"(best of {DOWNLOAD_REPS}, interleaved; DOWNLOAD_BLOCK = {d['download_block'] // MiB} MiB)", table(
            ["what", "best s", "runs s", "MB/s", f"vs {d['sdk_best']}"],
            [[name, f"{e['best_s']:.3f}", " ".join(f"{s:.3f}" for s in e["runs_s"]), f"{e['mb_per_s']:,.1f}",
              f"{e['mb_per_s'] / d['timings'][d['sdk_best']]['mb_per_s']:.2f}x"] for name, e in d["timings"].items()]),
            ""]
    lines.append("ratios: " + ", ".join(f"{k} = {v:.2f}x" for k, v in out["ratios"].items()))
    return "\n".join(lines)


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "chorus_batch"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=10_000, help="small blobs for listing and no-change (default %(default)s)")
    parser.add_argument("--large-mib", type=int, default=64, help="size of each large blob in MiB (default %(default)s)")
    parser.add_argument("--large-count", type=int, default=4, help="number of large blobs (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small sizes (1000 blobs, 2 x 8 MiB): checks that the script works")
    parser.add_argument("--only", default="listing,nochange,download",
                        help="comma-separated parts to run: listing, nochange, download (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="parent of the Azurite data folder (default %(default)s)")
    parser.add_argument("--unset-ca-env", action="store_true",
                        help="remove SSL_CERT_FILE and REQUESTS_CA_BUNDLE from this process's environment first "
                             "(with either set, chorus's Azure client parses that CA file on every request; see README)")
    parser.add_argument("--keep", action="store_true", help="keep the Azurite data folder")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/cloud-<timestamp>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.blobs, args.large_mib, args.large_count = 1000, 8, 2
    args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = args.only - {"listing", "nochange", "download"}
    if unknown:
        parser.error(f"unknown parts: {sorted(unknown)}")
    if args.blobs < 2 or args.large_mib < 1 or args.large_count < 1:
        parser.error("--blobs must be >= 2, --large-mib and --large-count >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ca_env = {k: os.environ[k] for k in CA_ENV if os.environ.get(k)}
    if args.unset_ca_env:
        for k in CA_ENV:
            os.environ.pop(k, None)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = args.out or RESULTS / f"cloud-{stamp}.json"
    workdir = Path(tempfile.mkdtemp(prefix="chorus-cloud-bench-", dir=args.workdir))
    azurite = Azurite(workdir / "azurite")
    saved_env = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    out: dict[str, Any] = {"meta": {
        "started": stamp, "git": git_revision(), "chorus_batch": str(Path(chorus_batch.__file__).parent),
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items()},
        "ca_env": ca_env, "ca_env_unset": args.unset_ca_env, "hash_threads": HASH_THREADS, "small_blob_bytes": SMALL_SIZE}, "ratios": {}}
    try:
        azurite.start()
        log(f"Azurite on port {azurite.port}, data in {azurite.location}")
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
        service = azurite.service_client()
        sdk_list_s = None
        if args.only & {"listing", "nochange"}:
            small = azurite.new_container("small")
            names = small_names(args.blobs)
            upload_s, _ = timed(lambda: upload_small(service, small, names))
            log(f"uploaded {args.blobs:,} small blobs in {upload_s:.1f} s")
            out["meta"]["upload_small_s"] = round(upload_s, 2)
            if "listing" in args.only:
                out["listing"] = measure_listing(service, small, args.blobs)
                sdk_list_s = out["listing"]["timings"]["sdk_list_blobs"]["best_s"]
                out["ratios"]["listing list_files/SDK (blobs/s)"] = out["listing"]["list_files_vs_sdk"]
                out["ratios"]["listing list_roots/SDK (blobs/s)"] = out["listing"]["list_roots_vs_sdk"]
                log("listing done")
            if "nochange" in args.only:
                if sdk_list_s is None:
                    sdk_list_s = interleaved(LIST_REPS, {"sdk": lambda: sdk_list(service, small)})["sdk"]["best_s"]
                time.sleep(max(0.0, 3.0 - upload_s))  # as run_benchmarks.py: nothing within the racy window
                out["nochange"] = measure_nochange(service, small, args.blobs, workdir, sdk_list_s)
                out["ratios"]["no-change run time/SDK list time"] = out["nochange"]["nochange_vs_sdk_list"]
                log("no-change done")
        if "download" in args.only:
            large = azurite.new_container("large")
            size = args.large_mib * MiB
            upload_s, expected = timed(lambda: upload_large(service, large, args.large_count, size))
            log(f"uploaded {args.large_count} x {args.large_mib} MiB in {upload_s:.1f} s")
            out["meta"]["upload_large_s"] = round(upload_s, 2)
            out["download"] = measure_download(service, large, expected, size, workdir)
            out["ratios"]["download hash_files/SDK best (MB/s)"] = out["download"]["hash_files_vs_sdk_best"]
            out["ratios"]["download hash_files/SDK 2 threads (MB/s)"] = out["download"]["hash_files_vs_sdk_2_threads"]
            out["ratios"]["download run/SDK best (MB/s)"] = out["download"]["run_vs_sdk_best"]
            log("download done")
        service.close()
    finally:
        azurite.stop()
        if saved_env is None:
            os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
        else:
            os.environ["AZURE_STORAGE_CONNECTION_STRING"] = saved_env
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(out), flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
