#!/usr/bin/env python3
"""Benchmark `chorus-batch upload` against a plain azure-storage-blob loop, on Azurite.

The script starts its own Azurite (tests/services.py's `Azurite`, imported, not copied), writes two local
sites, commits each with chorus_batch `run` (timed, reported apart), and then times, in the same
invocation, on the same files, interleaved (the order alternates from one repetition to the next):

  large   K files of M MiB (default 8 x 64 MiB, random bytes)
            chorus    upload(db, az://<fresh container>/, workers=W): plan, send (8 MiB Put Blocks, each
                      with a transactional MD5, the whole file's MD5 checked before Put Block List), ledger,
                      the listing check of the version and the manifest's copy
            sdk       ThreadPoolExecutor(W) over the files, each BlobClient.upload_blob(open(f, 'rb'),
                      overwrite=True, max_concurrency=C) into <version>/<srcfile> of another fresh container,
                      on a client with max_single_put_size = max_block_size = 8 MiB (chorus's block size)
            sdk_validate_content   the same with validate_content=True (an MD5 per block, as chorus sends)
          -> MB/s (10^6 bytes/s); ratio chorus / sdk
  small   N files of 1 KiB (default 10,000, 100 a folder)
            chorus    as above (one Put Blob each, Content-MD5 checked by the service)
            sdk       ThreadPoolExecutor(W), each worker reads the file and calls upload_blob(bytes, overwrite=True)
          -> files/s; ratio chorus / sdk

Only the upload is timed (a fresh copy of the committed manifest per repetition is made beforehand, untimed).
Each upload is checked: the blobs under <version>/ (the manifest copy left out) are exactly the site's files,
with their sizes. chorus's upload is also split into phases (plan, send, ledger writes, listing check,
manifest copy) by wrapping those functions from the outside; chorus_batch itself is not changed.

Everything runs on loopback against a Node.js emulator that shares the machine's cores: absolute rates
say little about a real storage account; the ratios compare two clients of the same server.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's chorus_batch, whatever the venv has installed
sys.path.insert(1, str(ROOT / "tests"))  # tests/services.py: Azurite (needs `npm ci`)

import chorus_batch  # noqa: E402
from chorus_batch import RunSettings, run  # noqa: E402
from chorus_batch.config import CloudSettings  # noqa: E402
from chorus_batch.store import uploads as uploads_mod  # noqa: E402
from chorus_batch.submit import central as central_mod  # noqa: E402
from chorus_batch.submit import upload as upload_mod  # noqa: E402
from chorus_batch.submit import verify as verify_mod  # noqa: E402
from services import Azurite  # noqa: E402

# The same helpers as the cloud benchmark's (its Azurite-side timing and tables), imported, not copied.
sys.path.insert(2, str(ROOT / "benchmarks"))
from cloud_benchmark import git_revision, log, rate, table, timed  # noqa: E402

MiB = 1 << 20
RESULTS = ROOT / "benchmarks" / "results"
SMALL_SIZE = 1024
FILES_PER_FOLDER = 100
RUN_WORKERS = 2  # hashing workers of the committing run (2 cores)
SDK_BLOCK = central_mod.BLOCK_SIZE  # the baseline's block size and single-put limit: chorus's (8 MiB)
CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")








# ----------------------------------------------------------------------------- the sites


def large_names(count: int) -> list[str]:
    return [f"{900000 + k:06d}/Waveforms/L{k}/L{k}.dat" for k in range(count)]  # a path the site layout accepts


def small_names(count: int) -> list[str]:
    return [f"{i // FILES_PER_FOLDER:06d}/Waveforms/S{i // FILES_PER_FOLDER}/S{i // FILES_PER_FOLDER}_{i % FILES_PER_FOLDER:03d}.dat"
            for i in range(count)]


def write_site(site: Path, names: list[str], size: int) -> None:
    """Random bytes (not compressible, all different), written in 8 MiB pieces."""
    for name in names:
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                piece = min(left, 8 * MiB)
                f.write(os.urandom(piece))
                left -= piece


def commit_site(site: Path, db: Path, n: int) -> dict[str, Any]:
    settings = RunSettings(site=str(site), db=str(db), validate_site=False, verify_sample=0, workers=RUN_WORKERS)
    seconds, result = timed(lambda: run(settings, argv=["upload-benchmark"]))
    if result.errors.height:
        raise RuntimeError(f"the run recorded problems: {result.errors.head(5).to_dicts()}")
    if result.n_files != n or result.label is None:
        raise RuntimeError(f"the run committed {result.n_files} files (label {result.label}), expected {n}")
    return {"wall_s": round(seconds, 3), "elapsed_s": result.elapsed_s, "hash_s": result.hash_s,
            "label": result.label, "n_files": result.n_files, "bytes": result.total_bytes,
            "timings": result.timings}


def copy_manifest_file(db: Path, to: Path) -> None:
    """A consistent copy (SQLite's online backup): every repetition plans from the same manifest."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(str(to) + suffix).unlink()
    source, target = sqlite3.connect(db), sqlite3.connect(to)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


# ----------------------------------------------------------------------------- chorus's phases


class Phases:
    """Seconds spent in chorus's upload phases, measured by wrapping the module functions the upload calls
    (looked up at call time): UploadLedger.plan, upload._send, UploadLedger.record (the ledger writes, in
    the sending loop's thread), verify.check_version (the listing check) and upload.copy_manifest."""

    TARGETS = (
        ("plan", uploads_mod.UploadLedger, "plan"),
        ("send", upload_mod, "_send"),
        ("ledger_record", uploads_mod.UploadLedger, "record"),
        ("listing_check", verify_mod, "check_version"),
        ("manifest_copy", upload_mod, "copy_manifest"),
    )

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {name: 0.0 for name, _, _ in self.TARGETS}
        self.calls: dict[str, int] = {name: 0 for name, _, _ in self.TARGETS}
        self._saved: list[tuple[Any, str, Any]] = []
        self._lock = threading.Lock()

    def _wrap(self, name: str, fn: Callable) -> Callable:
        phases = self

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with phases._lock:
                    phases.seconds[name] += time.perf_counter() - t
                    phases.calls[name] += 1

        return wrapper

    def __enter__(self) -> "Phases":
        for name, owner, attr in self.TARGETS:
            original = getattr(owner, attr)
            self._saved.append((owner, attr, original))
            setattr(owner, attr, self._wrap(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()

    def as_dict(self) -> dict[str, float]:
        return {name: round(s, 4) for name, s in self.seconds.items()}


# ----------------------------------------------------------------------------- the uploads


def chorus_upload(db: Path, container: str, workers: int) -> dict[str, Any]:
    with Phases() as phases:
        seconds, result = timed(lambda: upload_mod.upload(str(db), f"az://{container}/", cloud=CloudSettings(),
                                                          workers=workers, argv=["upload-benchmark"]))
    if len(result.versions) != 1:
        raise RuntimeError(f"the upload sent {len(result.versions)} versions, expected 1")
    v = result.versions[0]
    if int(result.exit_code) != 0 or not v.complete or v.n_not_sent or (
            v.verify_problems is not None and v.verify_problems.height) or v.manifest_copy is None:
        raise RuntimeError(f"the upload was not clean: exit {int(result.exit_code)}, complete {v.complete}, "
                           f"not sent {v.not_sent.head(5).to_dicts()}, problems {v.verify_problems}")
    return {"seconds": seconds, "elapsed_s": round(result.elapsed_s, 4), "n_sent": v.n_sent, "bytes_sent": v.bytes_sent,
            "phases_s": phases.as_dict(), "phase_calls": dict(phases.calls)}


def sdk_upload(service, container: str, label: str, site: Path, names: list[str], workers: int, *,
               large: bool, concurrency: int, validate_content: bool = False) -> dict[str, Any]:
    client = service.get_container_client(container)

    def one_large(name: str) -> int:
        with open(site / name, "rb") as f:
            client.get_blob_client(f"{label}/{name}").upload_blob(f, overwrite=True, max_concurrency=concurrency,
                                                                   validate_content=validate_content)
        return (site / name).stat().st_size

    def one_small(name: str) -> int:
        data = (site / name).read_bytes()
        client.get_blob_client(f"{label}/{name}").upload_blob(data, overwrite=True, validate_content=validate_content)
        return len(data)

    def go() -> int:
        with cf.ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(one_large if large else one_small, names))

    seconds, total = timed(go)
    return {"seconds": seconds, "n_sent": len(names), "bytes_sent": total}


def check_container(service, container: str, label: str, site: Path, names: list[str]) -> None:
    """The blobs under <label>/ (the manifest copy left out) are exactly the site's files, with their sizes."""
    client = service.get_container_client(container)
    found = {b.name[len(label) + 1:]: b.size for b in client.list_blobs(name_starts_with=f"{label}/")
             if not b.name.startswith(f"{label}/{central_mod.MANIFEST_FOLDER}/")}
    if len(found) != len(names):
        raise RuntimeError(f"{container}: {len(found)} blobs under {label}/, expected {len(names)}")
    wrong = [n for n in names if found.get(n) != (site / n).stat().st_size]
    if wrong:
        raise RuntimeError(f"{container}: {len(wrong)} blobs missing or of the wrong size, e.g. {wrong[:3]}")


def measure(kind: str, azurite: Azurite, service, sdk_service, site: Path, db: Path, names: list[str],
            commit: dict[str, Any], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    large = kind == "large"
    label = commit["label"]
    total_bytes = commit["bytes"]
    contenders: dict[str, Callable[[str], dict[str, Any]]] = {}
    rep_db = workdir / f"{kind}-rep.sqlite"

    def chorus(container: str) -> dict[str, Any]:
        return chorus_upload(rep_db, container, args.workers)

    contenders["chorus"] = chorus
    contenders["sdk"] = lambda c: sdk_upload(sdk_service, c, label, site, names, args.workers, large=large,
                                             concurrency=args.sdk_concurrency)
    if large:
        contenders["sdk_validate_content"] = lambda c: sdk_upload(sdk_service, c, label, site, names, args.workers,
                                                                  large=True, concurrency=args.sdk_concurrency,
                                                                  validate_content=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    order = list(contenders)
    for rep in range(args.reps):
        for name in (order if rep % 2 == 0 else order[::-1]):
            if name == "chorus":
                copy_manifest_file(db, rep_db)  # untimed: every repetition plans from the committed manifest
            container = azurite.new_container(f"{kind[:2]}{name[:3]}")
            entry = contenders[name](container)
            check_container(service, container, label, site, names)
            service.delete_container(container)  # untimed: keeps Azurite's data folder small
            entry["seconds"] = round(entry["seconds"], 4)
            entry["files_per_s"] = round(rate(len(names), entry["seconds"]), 1)
            entry["mb_per_s"] = round(rate(total_bytes / 1e6, entry["seconds"]), 1)
            runs[name].append(entry)
            log(f"{kind} rep {rep + 1} {name}: {entry['seconds']:.2f} s, {entry['mb_per_s']:.1f} MB/s, "
                f"{entry['files_per_s']:,.0f} files/s" + (f", phases {entry['phases_s']}" if "phases_s" in entry else ""))
    unit = "mb_per_s" if large else "files_per_s"
    best = {name: min(entries, key=lambda e: e["seconds"]) for name, entries in runs.items()}
    chorus_best = best["chorus"]
    send_s = chorus_best["phases_s"]["send"]
    out: dict[str, Any] = {
        "files": len(names), "file_bytes": total_bytes // len(names), "total_bytes": total_bytes, "label": label,
        "workers": args.workers, "sdk_max_concurrency": args.sdk_concurrency if large else None,
        "unit": unit, "commit": commit, "runs": runs,
        "best": {name: {"seconds": e["seconds"], unit: e[unit]} for name, e in best.items()},
        "chorus_phases_best_s": chorus_best["phases_s"],
        "chorus_send_only": {"seconds": send_s,
                             unit: round(rate(total_bytes / 1e6 if large else len(names), send_s), 1)},
    }
    out["ratio"] = round(chorus_best[unit] / best["sdk"][unit], 3)
    out["ratio_send_only"] = round(out["chorus_send_only"][unit] / best["sdk"][unit], 3)
    if large:
        out["ratio_vs_sdk_validate_content"] = round(chorus_best[unit] / best["sdk_validate_content"][unit], 3)
    return out


# ----------------------------------------------------------------------------- report




def report(out: dict[str, Any]) -> str:
    lines: list[str] = []
    for k, kind in enumerate(("large", "small"), start=1):
        if kind not in out:
            continue
        m = out[kind]
        unit, label = m["unit"], ("MB/s" if m["unit"] == "mb_per_s" else "files/s")
        sdk = m["best"]["sdk"][unit]
        size = f"{m['file_bytes'] // MiB} MiB" if m["file_bytes"] >= MiB else f"{m['file_bytes']} B"
        conc = f", SDK max_concurrency={m['sdk_max_concurrency']}" if m["sdk_max_concurrency"] else ""
        rows = [[name, f"{m['best'][name]['seconds']:.3f}", " ".join(f"{e['seconds']:.3f}" for e in entries),
                 f"{m['best'][name][unit]:,.1f}", f"{m['best'][name][unit] / sdk:.2f}x"]
                for name, entries in m["runs"].items()]
        rows.append(["chorus send phase only", f"{m['chorus_send_only']['seconds']:.3f}", "(best run)",
                     f"{m['chorus_send_only'][unit]:,.1f}", f"{m['ratio_send_only']:.2f}x"])
        c = m["commit"]
        lines += [f"{k}. {kind}: {m['files']:,} files x {size} ({m['total_bytes'] / 1e6:,.1f} MB), workers={m['workers']}"
                  f"{conc}, best of {len(next(iter(m['runs'].values())))}, alternating order", table(
                      ["what", "best s", "runs s", label, "vs sdk"], rows),
                  "   chorus phases (best run, s): " + ", ".join(f"{n} {s:.3f}" for n, s in m["chorus_phases_best_s"].items()),
                  f"   commit (`run`, not timed above): {c['wall_s']:.2f} s, hashing {c['hash_s']:.2f} s", ""]
    lines.append("ratios: " + ", ".join(f"{k} = {v:.2f}x" for k, v in out["ratios"].items()))
    return "\n".join(lines)




def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-count", type=int, default=8, help="large files (default %(default)s)")
    parser.add_argument("--large-mib", type=int, default=64, help="size of each large file in MiB (default %(default)s)")
    parser.add_argument("--small-count", type=int, default=10_000, help="1 KiB files (default %(default)s)")
    parser.add_argument("--workers", type=int, default=4, help="upload(workers=W) and the SDK loop's threads (default %(default)s)")
    parser.add_argument("--sdk-concurrency", type=int, default=1,
                        help="max_concurrency of each large upload_blob (default %(default)s: W requests in flight, as "
                             "chorus's max(4, W) block threads for W <= 4)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of each upload, best counts (default %(default)s)")
    parser.add_argument("--only", default="large,small", help="comma-separated parts: large, small (default: both)")
    parser.add_argument("--quick", action="store_true", help="2 x 16 MiB and 500 small files, 1 rep: checks the script works")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="parent of the sites, manifests and Azurite's data (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/upload-<timestamp>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.large_count, args.large_mib, args.small_count, args.reps = 2, 16, 500, 1
    args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    if args.only - {"large", "small"}:
        parser.error(f"unknown parts: {sorted(args.only - {'large', 'small'})}")
    if min(args.large_count, args.large_mib, args.small_count, args.workers, args.sdk_concurrency, args.reps) < 1:
        parser.error("counts, sizes, --workers, --sdk-concurrency and --reps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = args.out or RESULTS / f"upload-{stamp}.json"
    workdir = Path(tempfile.mkdtemp(prefix="chorus-upload-bench-", dir=args.workdir))
    azurite = Azurite(workdir / "azurite")
    saved_env = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    out: dict[str, Any] = {"meta": {
        "started": stamp, "git": git_revision(), "chorus_batch": str(Path(chorus_batch.__file__).parent),
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items()},
        "ca_env": {k: os.environ[k] for k in CA_ENV if os.environ.get(k)},
        "chorus_block_size": central_mod.BLOCK_SIZE, "chorus_single_put_max": central_mod.SINGLE_PUT_MAX,
        "sdk_block_size": SDK_BLOCK, "sdk_single_put_max": SDK_BLOCK}, "ratios": {}}
    sites = {
        "large": (large_names(args.large_count), args.large_mib * MiB),
        "small": (small_names(args.small_count), SMALL_SIZE),
    }
    try:
        azurite.start()
        log(f"Azurite on port {azurite.port}, data in {azurite.location}")
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string  # chorus's sign-in
        from azure.storage.blob import BlobServiceClient

        service = azurite.service_client()  # setup and checks
        sdk_service = BlobServiceClient.from_connection_string(  # the baseline: chorus's block size
            azurite.connection_string, max_single_put_size=SDK_BLOCK, max_block_size=SDK_BLOCK)
        for kind in ("large", "small"):
            if kind not in args.only:
                continue
            names, size = sites[kind]
            site, db = workdir / f"site-{kind}", workdir / f"{kind}.sqlite"
            write_s, _ = timed(lambda: write_site(site, names, size))
            log(f"{kind}: wrote {len(names):,} files of {size:,} bytes in {write_s:.1f} s")
            commit = commit_site(site, db, len(names))
            commit["write_site_s"] = round(write_s, 2)
            log(f"{kind}: committed version {commit['label']} in {commit['wall_s']:.2f} s")
            out[kind] = measure(kind, azurite, service, sdk_service, site, db, names, commit, args, workdir)
            unit = "MB/s" if kind == "large" else "files/s"
            out["ratios"][f"{kind} upload/SDK ({unit})"] = out[kind]["ratio"]
            out["ratios"][f"{kind} send phase/SDK ({unit})"] = out[kind]["ratio_send_only"]
            if not args.keep:
                shutil.rmtree(site, ignore_errors=True)  # the next site's disk space
        sdk_service.close()
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
