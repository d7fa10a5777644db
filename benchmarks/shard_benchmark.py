#!/usr/bin/env python3
"""Shards one after another on one node against a single-node run, on the same tree, in one invocation.

On the small100k tree of run_benchmarks.py (100k files of 4 KiB, warm page cache), with fresh
manifests each time:

  single   chorus-batch run --no-validate                     (first run: hashes every file)
  sharded  N x chorus-batch run --shard K/N --staging DIR --no-validate, one after another, then
           chorus-batch run --merge DIR --no-validate         (the same work split as a job array would)

and reports sharded / single (target: <= 1.15 for N = 4), each the best of --reps. It also checks
that both manifests hold the same current rows. Validation is left out of both: it runs once, in
the merge or the single run alike.

    python benchmarks/shard_benchmark.py [--shards 4] [--scale default|smoke] [--reps 2]
    python benchmarks/shard_benchmark.py --scale full --reps 1     # the 1M-file tree (small1m, ~4 GB of disk)

Each of the N + 1 processes pays interpreter start-up, imports and a worker pool (~0.8 s here): on 100k
files that is a large share of a 6 s run, on 1M files a small one. Wall time swings with what else the machine
runs, so each step's CPU seconds (its own and its workers', from getrusage) are reported too, with the load
average and the CPU of the start-up alone (`import` of what a shard loads, best of --reps): the sharded run's extra
CPU against N x that start-up says how much of the gap is start-up and how much is work sharding adds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmarks import SCALES, SETTLE_S, build_tree, compile_bytecode, remove_manifest, wait_until  # noqa: E402


def _children_cpu_s() -> float:
    """CPU seconds of the children waited for so far (their worker processes included: each waits for its own)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds, the finished process) of `command`."""
    t0, c0 = time.perf_counter(), _children_cpu_s()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, _children_cpu_s() - c0, proc


def chorus(*args: str, cwd: Path) -> tuple[float, float]:
    wall, cpu, proc = timed([sys.executable, "-m", "chorus_batch", "run", "-q", *args], cwd)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"chorus-batch run {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return wall, cpu


def startup(cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a process that only loads what a shard loads (the floor each extra process adds)."""
    probe = "import chorus_batch.cli, chorus_batch.pipeline, chorus_batch.shards"
    wall, cpu, proc = timed([sys.executable, "-c", probe], cwd)
    if proc.returncode:
        raise SystemExit(f"the start-up probe failed:\n{proc.stderr}")
    return wall, cpu


def current_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT srcfile, size, md5 FROM source_files WHERE time_invalid IS NULL ORDER BY 1").fetchall()
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--scale", choices=("default", "smoke", "full"), default="default",
                        help="default: small100k; smoke: its 2k-file copy; full: small1m (1M files)")
    parser.add_argument("--reps", type=int, default=2, help="runs of each, the best counts (default 2)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    # small100k (or its smoke version); with --scale full, small1m
    tree = next(t for t in SCALES[args.scale] if t.name == "small1m") if args.scale == "full" else SCALES[args.scale][0]
    work = Path(tempfile.mkdtemp(prefix="chorus-shard-bench-", dir=args.workdir))
    try:
        compile_bytecode(work)  # five processes start where the single run starts one: none compiles the package
        root = work / "tree"
        n_files, build_s = build_tree(root, tree)
        wait_until(time.time() + SETTLE_S)
        print(f"tree {tree.name}: {n_files} files, built in {build_s:.1f} s", flush=True)
        subprocess.run(["find", str(root), "-type", "f", "-exec", "cat", "{}", "+"], stdout=subprocess.DEVNULL)  # warm
        single_db, sharded_db, staging = work / "single.sqlite", work / "sharded.sqlite", work / "staging"
        single, sharded, shard_s, merge_s = [], [], [], []
        single_cpu, sharded_cpu, starts = [], [], []
        load_before = os.getloadavg()[0]
        for _ in range(args.reps):
            starts.append(startup(work))
            remove_manifest(single_db) if single_db.exists() else None
            wall, cpu = chorus("--site", str(root), "--db", str(single_db), "--no-validate", cwd=work)
            single.append(wall)
            single_cpu.append(cpu)
            if sharded_db.exists():
                remove_manifest(sharded_db)
            shutil.rmtree(staging, ignore_errors=True)
            parts = [chorus("--site", str(root), "--db", str(sharded_db), "--shard", f"{k}/{args.shards}",
                            "--staging", str(staging), "--no-validate", cwd=work) for k in range(args.shards)]
            merge = chorus("--site", str(root), "--db", str(sharded_db), "--merge", str(staging), "--no-validate", cwd=work)
            shard_s.append(sum(wall for wall, _cpu in parts))
            merge_s.append(merge[0])
            sharded.append(shard_s[-1] + merge[0])
            sharded_cpu.append(sum(cpu for _wall, cpu in parts) + merge[1])
        same = current_rows(single_db) == current_rows(sharded_db)
        best = min(range(args.reps), key=lambda i: sharded[i])
        result = {"tree": tree.name, "files": n_files, "shards": args.shards, "single_s": round(min(single), 3),
                  "sharded_s": round(sharded[best], 3), "shards_s": round(shard_s[best], 3),
                  "merge_s": round(merge_s[best], 3), "ratio": round(sharded[best] / min(single), 3),
                  "target": 1.15, "same_rows": same,
                  # (the same runs' CPU seconds, steadier than wall time on a shared machine, and the start-up alone)
                  "single_cpu_s": round(single_cpu[best], 3), "sharded_cpu_s": round(sharded_cpu[best], 3),
                  "cpu_ratio": round(sharded_cpu[best] / single_cpu[best], 3),
                  "startup_s": round(min(wall for wall, _cpu in starts), 3),
                  "startup_cpu_s": round(min(cpu for _wall, cpu in starts), 3),
                  "extra_cpu_s": round(sharded_cpu[best] - single_cpu[best], 3),
                  "extra_processes": args.shards,
                  "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        print(json.dumps(result, indent=2))
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        (out / f"shards-{time.strftime('%Y%m%d%H%M%S')}.json").write_text(json.dumps(result, indent=2))
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
