#!/usr/bin/env python3
"""`run --merge` of shard Parquet totalling N rows (default 10M), timed in one invocation against a
plain DuckDB read of the same Parquet.

No file is written on disk but the shards: each shard's ScanResult is synthesized with polars and
written with the real writer (ScanResult.write), as `run --shard K/N --staging DIR` would, with
paths like <person>/Waveforms/Telemetry/<session>/<session>_0001.dat. Then, each a subprocess under
GNU time (wall seconds, peak RSS):

  baseline   DuckDB COPY (SELECT * FROM read_parquet([...shards...])) TO 'x.parquet'
  first      run --merge into a new manifest (N rows added: the previous state of what follows)
  changed    run --merge of shards with 2% changed (0.5% each replaced, removed, renamed, added)
  no-change  run --merge of the same shards again: must commit no version and add no row

All merges run with --no-validate (there are no files to read headers from). The targets of
issue 12: the changed merge < 30 s and < 2 GiB peak RSS at 10M rows; the no-change merge adds no rows.

    PYTHONPATH=. .venv/bin/python benchmarks/merge_benchmark.py [--rows 10000000] [--shards 4] [--profile DIR]

On a machine shared with other work the wall says little (a 10M-row changed merge: 156-203 s of wall for 48 s
of CPU at a load average of 12-27 on 2 cores), so each step's CPU seconds (GNU time's user + sys, the merge's
threads included) and the load average around it are reported too. A merge is one process (its threads: polars',
DuckDB's, the state cache's writer), so GNU time's peak RSS is that of all its processes. With --profile DIR,
each merge runs under cProfile timed by time.process_time (every thread's CPU) and leaves DIR/<step>.prof
(python -m pstats DIR/changed.prof; sort cumulative): the figures are then a profiled run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from chorus_batch.exclude import Excludes
from chorus_batch.frames import SCANNED_SCHEMA, empty_errors
from chorus_batch.scan import Coverage, ScanResult, shard_of
from chorus_batch.sources import open_source

FILES_PER_SESSION = 100
SESSIONS_PER_PERSON = 10
CHANGE_EVERY = 200  # of the previous rows, 1 in 200 each replaced, removed and renamed (and as many added)
GiB = 1 << 30


def site_files(rows: int, offset: int = 0) -> pl.DataFrame:
    """`rows` waveform files (SCANNED_SCHEMA) numbered from `offset`: 100 segments per session, 10
    sessions per person; the MD5 is a function of the number."""
    i = pl.int_range(offset, offset + rows, dtype=pl.Int64, eager=True).alias("i").to_frame()
    session = (pl.col("i") // FILES_PER_SESSION + 900_000).cast(pl.String)
    person = (pl.col("i") // (FILES_PER_SESSION * SESSIONS_PER_PERSON) + 1_000_000).cast(pl.String)
    segment = (pl.col("i") % FILES_PER_SESSION + 1).cast(pl.String).str.zfill(4)
    return i.select(
        root_id=pl.lit(0, pl.Int64),
        srcfile=pl.concat_str([person, pl.lit("/Waveforms/Telemetry/"), session, pl.lit("/"), session, pl.lit("_"),
                               segment, pl.lit(".dat")]),
        size=1_000_000 + pl.col("i") % 1000,
        mtime_ns=1_700_000_000_000_000_000 + pl.col("i"),
        md5=md5_of(pl.col("i")),
        read=pl.lit(False), verify=pl.lit(False), md5_source=pl.lit("reused"), etag=pl.lit(None, pl.String),
        read_ns=pl.lit(None, pl.Int64), i=pl.col("i"),
    )


def md5_of(number: pl.Expr, salt: int = 0) -> pl.Expr:
    """32 hexadecimal digits, unique per (number, salt)."""
    return pl.concat_str([number.hash(seed=salt).cast(pl.String).str.zfill(20),
                          (number + salt * 10**11).cast(pl.String).str.zfill(12)])


def changed(files: pl.DataFrame) -> pl.DataFrame:
    """2% changed: replaced (new MD5), removed, renamed (same content, another name), and as many added."""
    kind = pl.col("i") % CHANGE_EVERY
    kept = files.filter(kind != 1).with_columns(
        md5=pl.when(kind == 0).then(md5_of(pl.col("i"), salt=1)).otherwise(pl.col("md5")),
        srcfile=pl.when(kind == 2).then(pl.col("srcfile").str.replace(r"\.dat$", "r.dat")).otherwise(pl.col("srcfile")),
        read=kind == 0, md5_source=pl.when(kind == 0).then(pl.lit("computed")).otherwise(pl.lit("reused")))
    added = site_files(files.height // CHANGE_EVERY, offset=files.height).with_columns(
        read=pl.lit(True), md5_source=pl.lit("computed"))
    return pl.concat([kept, added])


def write_shards(files: pl.DataFrame, staging: Path, shards: int, root: str, based_on: str | None) -> None:
    """The frame split as the shards would have scanned it, each written with ScanResult.write."""
    by_shard = files.with_columns(_shard=shard_of(files["srcfile"], shards))
    for k in range(shards):
        part = by_shard.filter(pl.col("_shard") == k).select(list(SCANNED_SCHEMA))
        ScanResult(files=part, errors=empty_errors(), roots=[(root, None)], scan_started_ns=time.time_ns(),
                   coverage=Coverage(k, shards), based_on=based_on,
                   exclude_patterns=Excludes().patterns,  # what a shard run with the default globs records
                   ).write(staging / f"shard-{k}-of-{shards}")


def timed(cmd: list[str], **kwargs) -> dict:
    """Wall seconds, CPU seconds (user + sys, every thread) and peak RSS (GNU time's %M) of a subprocess, with the
    1-minute load average before and after it."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", *cmd], capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    user, system, rss_kib = proc.stderr.strip().splitlines()[-1].split()
    return {"wall_s": round(wall, 3), "cpu_s": round(float(user) + float(system), 2), "rss_mib": round(int(rss_kib) / 1024),
            "load": [round(load, 1), round(os.getloadavg()[0], 1)], "stdout": proc.stdout, "stderr": proc.stderr}


# `chorus-batch run ...` under cProfile timed by time.process_time: argv[1] the profile's path, the rest run's arguments
PROFILED = ("import cProfile, sys, time; from chorus_batch.cli import main; p = cProfile.Profile(time.process_time); "
            "code = p.runcall(main, sys.argv[2:]); p.dump_stats(sys.argv[1]); raise SystemExit(code)")


def merge(site: Path, db: Path, staging: Path, cwd: Path, profile: Path | None = None) -> dict:
    command = ["-m", "chorus_batch"] if profile is None else ["-c", PROFILED, str(profile)]
    result = timed([sys.executable, *command, "run", "--site", str(site), "--db", str(db), "--merge",
                    str(staging), "--no-validate", "--json", "-q", "-v"], cwd=cwd, env=os.environ)
    stdout, stderr = result.pop("stdout"), result.pop("stderr")
    if not stdout.strip():
        raise SystemExit(f"run --merge {staging} printed no summary:\n{stderr}")
    summary = json.loads(stdout)
    result.update(counts=summary["counts"], version=summary["version"], stage_s=summary.get("stage_s"))
    return result


def manifest_rows(db: Path) -> tuple[int, int, str]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT (SELECT count(*) FROM source_files), count(*), max(label) FROM versions").fetchone()
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the shards in all (default 10M)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--profile", type=Path, help="profile each merge (process_time) into this folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="chorus-merge-bench-", dir=args.workdir))
    try:
        site, db = work / "site", work / "m.sqlite"
        site.mkdir()
        root = open_source(str(site)).location
        t0 = time.perf_counter()
        first = site_files(args.rows)
        write_shards(first, work / "first", args.shards, root, None)
        print(f"{args.rows:,} rows in {args.shards} shards written in {time.perf_counter() - t0:.1f} s", flush=True)

        parquet = sorted(str(p) for p in (work / "first").glob("shard-*/files.parquet"))
        baseline = timed([sys.executable, "-c", "import duckdb, sys; duckdb.sql(\"COPY (SELECT * FROM read_parquet(\" "
                          "+ repr(sys.argv[2:]) + \")) TO '\" + sys.argv[1] + \"' (FORMAT parquet)\")",
                          str(work / "copy.parquet"), *parquet])
        baseline.pop("stdout"), baseline.pop("stderr")
        print(f"baseline DuckDB copy: {baseline}", flush=True)

        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)

        def profiled(step: str) -> Path | None:
            return None if args.profile is None else args.profile.absolute() / f"{step}.prof"

        runs = {"first": merge(site, db, work / "first", work, profiled("first"))}
        print(f"first merge: {runs['first']}", flush=True)
        rows_before, versions_before, label = manifest_rows(db)

        second = changed(first)
        del first
        write_shards(second, work / "changed", args.shards, root, label)
        runs["changed"] = merge(site, db, work / "changed", work, profiled("changed"))
        print(f"changed merge: {runs['changed']}", flush=True)
        rows_changed, versions_changed, label = manifest_rows(db)

        write_shards(second, work / "nochange", args.shards, root, label)
        del second
        runs["nochange"] = merge(site, db, work / "nochange", work, profiled("nochange"))
        print(f"no-change merge: {runs['nochange']}", flush=True)
        rows_after, versions_after, _ = manifest_rows(db)

        result = {
            "rows": args.rows, "shards": args.shards, "baseline": baseline, "runs": runs,
            "changed_vs_baseline": round(runs["changed"]["wall_s"] / baseline["wall_s"], 2),
            "nochange_vs_baseline": round(runs["nochange"]["wall_s"] / baseline["wall_s"], 2),
            "source_files_rows": [rows_before, rows_changed, rows_after],
            "nochange_adds_nothing": rows_after == rows_changed and versions_after == versions_changed,
            "targets": {"changed_wall_lt_30s": runs["changed"]["wall_s"] < 30,
                        "changed_rss_lt_2gib": runs["changed"]["rss_mib"] * 2**20 < 2 * GiB},
        }
        print(json.dumps(result, indent=2))
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        (out / f"merge-{time.strftime('%Y%m%d%H%M%S')}.json").write_text(json.dumps(result, indent=2))
        return 0 if result["nochange_adds_nothing"] else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
