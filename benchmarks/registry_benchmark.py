#!/usr/bin/env python3
"""Reading a large linkage registry for validation, timed in one invocation against a plain read of the same CSV.

A site with a million waveform files ships a waveform_registry.csv of a million rows (Multimodal-Linkage: one
row per delivered file). Validation reads it whenever it changes (each new delivery appends rows), in a hashing
worker or in the validate stage. This writes such a registry (the procedure's columns, ROWS rows, 100 files a
person, visits a day long) and times, each in a fresh subprocess (wall seconds, peak RSS of that process):

  baseline   pyarrow.csv.read_csv of the file, every column as text (what any reader of it pays)
  facts      the registry's facts as validation keeps them (readers.parse_facts, then the JSON it is stored as)

and reports facts / baseline for wall and the facts' peak RSS. Targets: wall <= 4x the baseline's, peak RSS
< 512 MiB at 1M rows (the run's other processes hold up to ~900 MiB at 1M files: issue 15's 1 GiB is for all).

    PYTHONPATH=. .venv/bin/python benchmarks/registry_benchmark.py [--rows 1000000] [--reps 2]
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/registry_benchmark.py     # another release's reader
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file\n"


def write_registry(path: Path, rows: int) -> None:
    """ROWS rows: person p holds files 100p..100p+99, captured on its visit's day (visit p*10, one day long)."""
    with path.open("w", newline="") as f:
        f.write(HEADER)
        batch = []
        for i in range(rows):
            p = 1 + i // 100
            day = 1 + p % 28
            batch.append(f"{i + 1},{p * 100 + i % 3},{p},{p},{p * 10},2024-02-{day:02d} {8 + i % 12:02d}:00:00,"
                         f"/export/monitor/{p}/rec_{i}.dat,{p:06d}/Waveforms/Telemetry/{p}_{i % 7}/rec_{i}.dat\n")
            if len(batch) == 100_000:
                f.writelines(batch)
                batch.clear()
        f.writelines(batch)


BASELINE = """
import sys, pyarrow as pa, pyarrow.csv as pacsv
names = open(sys.argv[1]).readline().strip().split(",")
t = pacsv.read_csv(sys.argv[1], convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
print(t.num_rows)
"""

FACTS = """
import json, sys
from chorus_batch.validate.readers import parse_facts
from chorus_batch.validate.rules import KIND_REGISTRY
with open(sys.argv[1], "rb") as f:
    facts = parse_facts(KIND_REGISTRY, f)
assert "error" not in facts, facts["error"]
print(facts["rows"], len(json.dumps(facts)))
"""


def timed(code: str, path: Path) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of `python -c code path` under GNU time."""
    t0 = time.perf_counter()
    # (run in the registry's folder: `python -c` puts the working folder first on sys.path, before PYTHONPATH, and
    # from a checkout it would import that checkout's chorus_batch, not the one PYTHONPATH names for an A/B)
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, cwd=path.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return wall, int(proc.stderr.strip().splitlines()[-1]) / 1024, proc.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=2, help="runs of each, the best counts (default 2)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="chorus-registry-bench-", dir=args.workdir))
    try:
        path = work / "waveform_registry.csv"
        write_registry(path, args.rows)
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        baseline = [timed(BASELINE, path) for _ in range(args.reps)]
        facts = [timed(FACTS, path) for _ in range(args.reps)]
        rows, json_bytes = facts[0][2].split()
        best_base, best_facts = min(b[0] for b in baseline), min(f[0] for f in facts)
        result = {"rows": args.rows, "csv_mib": round(path.stat().st_size / 2**20, 1),
                  "baseline_s": round(best_base, 3), "baseline_peak_mib": round(min(b[1] for b in baseline)),
                  "facts_s": round(best_facts, 3), "facts_peak_mib": round(max(f[1] for f in facts)),
                  "facts_json_mib": round(int(json_bytes) / 2**20, 1), "ratio": round(best_facts / best_base, 2),
                  "targets": {"ratio": 4.0, "facts_peak_mib": 512}}
        print(json.dumps(result, indent=2))
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        (out / f"registry-{time.strftime('%Y%m%d%H%M%S')}.json").write_text(json.dumps(result, indent=2))
        return 0 if int(rows) == args.rows else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
