#!/usr/bin/env python3
"""Caching the header facts a first run parses while hashing, timed in one invocation against a plain bulk
load of the same rows.

A first run hands the facts it parsed to the manifest every hashing.FACTS_HANDED_EVERY files
(ValidationCache.save_facts, one transaction each), so a 1M-file site caches about 620k facts in ten pieces.
Here N synthetic facts (MD5 keys, JSON of about 300 bytes, as a WFDB header's) are:

  baseline   one bulk load into a new SQLite file: CREATE TABLE, executemany in one transaction (the floor
             for writing these bytes once)
  pieces     save_facts of FACTS_HANDED_EVERY at a time into a new manifest, as a first run does

and the ratio pieces/baseline is printed with each piece's seconds. Keyed by MD5 in a WITHOUT ROWID table
(schema 10), each piece rewrote pages all through the table and the pieces grew slower one after another;
with a rowid table and a (kind, md5) index (schema 11) they stay about as fast as the first.

    PYTHONPATH=. .venv/bin/python benchmarks/facts_cache_benchmark.py [--facts 650000] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from chorus_batch.hashing import FACTS_HANDED_EVERY
from chorus_batch.store import Manifest


def facts(start: int, n: int) -> pl.DataFrame:
    ids = range(start, start + n)
    return pl.DataFrame({
        "kind": ["wfdb_header.v3" if i % 3 else "dicom.v6" for i in ids],
        "md5": [hashlib.md5(str(i).encode()).hexdigest() for i in ids],
        "facts": [json.dumps({"n_sig": 2, "fs": 125.0, "sig_len": i, "pad": "x" * 240}) for i in ids],
    }).sort("kind", "md5")  # (as a scan hands them)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=650_000, help="facts to cache (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="chorus-facts-", dir=args.workdir))
    try:
        pieces = [facts(start, min(FACTS_HANDED_EVERY, args.facts - start))
                  for start in range(0, args.facts, FACTS_HANDED_EVERY)]

        t0 = time.perf_counter()
        con = sqlite3.connect(work / "baseline.sqlite")
        con.execute("PRAGMA journal_mode = WAL")
        with con:
            con.execute("CREATE TABLE facts (kind TEXT NOT NULL, md5 TEXT NOT NULL, facts TEXT NOT NULL)")
            for piece in pieces:
                con.executemany("INSERT INTO facts VALUES (?, ?, ?)", piece.iter_rows())
        con.close()
        baseline = time.perf_counter() - t0

        manifest = Manifest(work / "manifest.sqlite")
        manifest.ensure_schema()
        seconds = []
        for piece in pieces:
            t0 = time.perf_counter()
            manifest.validation.save_facts(piece, replace=False, read_back=False)
            seconds.append(time.perf_counter() - t0)
        total = sum(seconds)
        print(f"{args.facts:,} facts in {len(pieces)} pieces of {FACTS_HANDED_EVERY:,}")
        print(f"baseline (one bulk load): {baseline:.2f} s")
        print(f"save_facts piece by piece: {total:.2f} s = {total / baseline:.2f}x the baseline; "
              f"pieces: {' '.join(f'{s:.2f}' for s in seconds)}")
        print(f"last piece / first piece: {seconds[-1] / seconds[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
