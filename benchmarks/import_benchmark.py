#!/usr/bin/env python3
"""`import-journal` of a synthetic chorus-upload journal (v2 schema) of N files over K versions, timed in one
invocation against reading the same journal once with the sqlite3 command-line tool.

The journal is written directly with sqlite3 (the DDL of tests/fixtures/chorus-upload/README.md; no file on
disk but the journal): a CHoRUS site of `OMOP/<table>.csv`, `Metadata/<file>` and, per person (folder
`000123`, PERSON_ID 123), Waveforms `<pid>/Waveforms/<yyyymmdd>/<pid>_<yyyymmdd>_<hhmmss>.hea|.dat` and Images
`<pid>/Images/<MOD>/<accession>/<series uid>/<nnnn>.dcm`. Each of the K `journal update` runs after the first
replaces ~2% of the active files (new row with a new MD5/size/mtime; the old row's TIME_INVALID_us = the new
row's TIME_VALID_us; the OMOP tables are replaced every time), deletes ~0.5%, touches ~0.5% (mtime only: a
new row keeping the old VERSION_ID and UPLOAD_DT_ID), renames ~0.2% (delete + add, same MD5/size/mtime) and
adds ~1% (new persons, and new recordings of existing ones), all at random over the site; after each update a
`file mark_as_uploaded_local` marks ~80% of that version's active unmarked rows. Lookup ids have gaps, as
INSERT OR IGNORE under AUTOINCREMENT leaves them. Then, each a subprocess under GNU time (wall, peak RSS):

  baseline     sqlite3 -csv journal.db "<the importer's own SELECT: journal_v2 joined with its lookups>" > /dev/null
               (without the sqlite3 tool: Python's sqlite3 fetching all rows); Python's fetch is also timed
  import       python -m chorus_batch import-journal journal.db --db out.sqlite --to az://central/ --json -q

The import is checked (exit status 1 when wrong): K versions, each with the files of its tree, the journal's
active rows current, one ledger row per distinct upload mark. With -v the import runs with -v instead of -q,
and the seconds between its progress lines (start-up, reading the journal, each version's commit) are reported.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/import_benchmark.py [--files 1000000] [--versions 5] [-v]
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
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

# The importer's own SELECT (journal_v2 joined with its lookups): the baseline reads exactly what it reads.
from chorus_batch.upstream.journal import _V2_ROWS

# The v2 DDL as chorus-upload writes it: `sqlite3 .schema` of the fixture journal (sqlite_sequence is SQLite's own).
DDL = "\n".join(line for line in (Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "chorus-upload"
                                  / "schema" / "journal_v2_schema.sql").read_text().splitlines()
                 if "sqlite_sequence" not in line)

MODALITIES = {"OMOP": 1, "Images": 2, "Waveforms": 3, "Metadata": 4}  # ids as in journal A
OMOP_TABLES = ["person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
               "procedure_occurrence", "measurement", "observation", "note", "device_exposure"]
METADATA_FILES = ["submission.json", "WAVEFORM_SUBMISSION.md"]
DAYS, RECORDS = 4, 2  # per person: 4 recording days x 2 records x (.hea, .dat) = 16 waveform files
SERIES, INSTANCES = 2, 12  # per person: one study, 2 series x 12 instances = 24 DICOM files
FILES_PER_PERSON = DAYS * RECORDS * 2 + SERIES * INSTANCES  # 40
IMAGE_MODS = ["CT", "MR", "XR", "US"]
REPLACE, DELETE, TOUCH, RENAME, ADD, MARK = 0.02, 0.005, 0.005, 0.002, 0.01, 0.8
SITE = "/data/site"
CENTRAL = "/data/central"  # where upstream "uploaded" (a local folder, as in the fixtures): --to names the container
COMMON = "--config /data/config.toml"
INSERT_CHUNK = 100_000
WORK_COLUMNS = {"file_id": pl.Int64, "person": pl.Int64, "folder": pl.String, "filename": pl.String,
                "modality": pl.Int64, "mtime_us": pl.Int64, "size": pl.Int64, "md5": pl.String, "valid_us": pl.Int64,
                "invalid_us": pl.Int64, "upload_k": pl.Int64, "version_k": pl.Int64}


# ----------------------------------------------------------------------------- the journal


def us(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000


def random_md5(rng: np.random.Generator, n: int) -> pl.Series:
    text = rng.bytes(16 * n).hex()
    return pl.Series("md5", [text[i:i + 32] for i in range(0, 32 * n, 32)], dtype=pl.String)


def person_files(persons: np.ndarray, rng: np.random.Generator, mtime_before_us: int) -> pl.DataFrame:
    """FILES_PER_PERSON files of each person number (folder = its zero-padded id, PERSON_ID the integer)."""
    n = len(persons) * FILES_PER_PERSON
    base = pl.DataFrame({"p": np.repeat(persons, FILES_PER_PERSON),
                         "j": np.tile(np.arange(FILES_PER_PERSON), len(persons))})
    pid_num = (pl.col("p") * 37 + 45) % 1_000_000  # unique for p < 1M; ~10% of ids have leading zeros
    pid = pid_num.cast(pl.String).str.zfill(6)
    wave = pl.col("j") < DAYS * RECORDS * 2
    day = (pl.date(2023, 1, 1) + pl.duration(days=(pl.col("p") * 7 + (pl.col("j") // (RECORDS * 2)) * 11) % 700)
           ).dt.strftime("%Y%m%d")
    hhmmss = pl.format("{}{}00", (8 + (pl.col("j") // 2 % RECORDS) * 5).cast(pl.String).str.zfill(2),
                       (pl.col("p") * 13 % 60).cast(pl.String).str.zfill(2))
    image = pl.col("j") - DAYS * RECORDS * 2
    mod = pl.col("p") % len(IMAGE_MODS)
    frame = base.select(
        person=pid_num,
        folder=pl.when(wave).then(pl.concat_str([pid, pl.lit("/Waveforms/"), day]))
        .otherwise(pl.concat_str([pid, pl.lit("/Images/"), mod.replace_strict(dict(enumerate(IMAGE_MODS))),
                                  pl.lit("/ACC"), pl.col("p").cast(pl.String).str.zfill(7),
                                  pl.lit("/1.2.840.113619.2.55."), pl.col("p").cast(pl.String), pl.lit("."),
                                  (image // INSTANCES + 1).cast(pl.String)])),
        filename=pl.when(wave).then(pl.concat_str([pid, pl.lit("_"), day, pl.lit("_"), hhmmss,
                                                   pl.when(pl.col("j") % 2 == 0).then(pl.lit(".hea")).otherwise(pl.lit(".dat"))]))
        .otherwise(pl.concat_str([(image % INSTANCES + 1).cast(pl.String).str.zfill(4), pl.lit(".dcm")])),
        modality=pl.when(wave).then(MODALITIES["Waveforms"]).otherwise(MODALITIES["Images"]).cast(pl.Int64),
        size=pl.when(wave & (pl.col("j") % 2 == 0)).then(pl.lit(600, pl.Int64))  # .hea
        .when(wave).then(pl.lit(20_000_000, pl.Int64)).otherwise(pl.lit(520_000, pl.Int64)),
    )
    return frame.with_columns(
        size=pl.col("size") + pl.Series(rng.integers(0, 100_000, n)) * (pl.col("size") > 1000),
        mtime_us=pl.Series(mtime_before_us - rng.integers(3_600_000_000, 400 * 86_400_000_000, n)),
        md5=random_md5(rng, n))


def site_files(n: int, start_us: int) -> pl.DataFrame:
    """OMOP tables and Metadata files (PERSON_ID NULL)."""
    names = [("OMOP", f"{t}.csv") for t in OMOP_TABLES] + [("Metadata", f) for f in METADATA_FILES]
    names = names[:n]
    rng = np.random.default_rng(len(names))
    return pl.DataFrame({
        "person": pl.Series([None] * len(names), dtype=pl.Int64), "folder": [m for m, _ in names],
        "filename": [f for _, f in names], "modality": [MODALITIES[m] for m, _ in names],
        "size": rng.integers(1_000_000, 5_000_000_000, len(names)),
        "mtime_us": start_us - rng.integers(3_600_000_000, 10 * 86_400_000_000, len(names)),
        "md5": random_md5(rng, len(names))})


def new_rows(frame: pl.DataFrame, first_id: int, valid_us: dict[int, int], k: int, touched: bool = False) -> pl.DataFrame:
    """`frame` as rows written by update `k` (ids from first_id, TIME_VALID_us its modality's timestamp), labelled
    `k` and not uploaded; a touched file's row keeps its old row's label and upload mark (upstream's "MOVED")."""
    frame = frame.with_columns(
        file_id=pl.int_range(first_id, first_id + frame.height, dtype=pl.Int64),
        valid_us=pl.col("modality").replace_strict(valid_us, return_dtype=pl.Int64),
        invalid_us=pl.lit(None, pl.Int64))
    if not touched:
        frame = frame.with_columns(version_k=pl.lit(k, pl.Int64), upload_k=pl.lit(None, pl.Int64))
    return frame.select(list(WORK_COLUMNS)).cast(WORK_COLUMNS)  # type: ignore[arg-type]


def generate(path: Path, files: int, versions: int, seed: int) -> dict:
    """Write the journal; return what the import must find (trees' sizes, active rows, marks)."""
    rng = np.random.default_rng(seed)
    labels = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=30 * k) for k in range(versions)]
    starts = [label + timedelta(days=2, hours=3, minutes=k * 7, seconds=11) for k, label in enumerate(labels)]
    label_text = [label.strftime("%Y%m%d%H%M%S") for label in labels]
    # One timestamp per modality per update (each modality is scanned by its own call), a few ms apart.
    stamps = [{m: us(start) + 1_400_000 + 23_417 * m + 311 * k for m in MODALITIES.values()}
              for k, start in enumerate(starts)]

    n_site = min(files, len(OMOP_TABLES) + len(METADATA_FILES))
    n_persons = -(-(files - n_site) // FILES_PER_PERSON)
    first = pl.concat([site_files(n_site, us(starts[0])),
                       person_files(np.arange(n_persons), rng, us(starts[0])).head(files - n_site)], how="diagonal")
    active = new_rows(first, 1, stamps[0], 0)
    next_id, next_person = active.height + 1, n_persons
    ended: list[pl.DataFrame] = []
    tree_sizes, history = [], []
    repeated_marks = 0  # touched rows repeat their old row's mark: one mark per (path, label, MD5, mark)

    for k in range(versions):
        if k:
            start_us, stamp = us(starts[k]), stamps[k]
            n = active.height
            kind = np.full(n, -1, dtype=np.int8)
            order = rng.permutation(n)
            cut = np.cumsum([0, *(round(n * f) for f in (REPLACE, DELETE, TOUCH, RENAME))])
            for i in range(4):
                kind[order[cut[i]:cut[i + 1]]] = i  # 0 replace, 1 delete, 2 touch, 3 rename
            active = active.with_columns(_kind=pl.Series(kind)).with_columns(
                _kind=pl.when(pl.col("modality") == MODALITIES["OMOP"]).then(0).otherwise(pl.col("_kind")))
            changed = active.filter(pl.col("_kind") >= 0)
            ended.append(changed.with_columns(invalid_us=pl.col("modality").replace_strict(stamp, return_dtype=pl.Int64))
                         .drop("_kind"))
            modified_us = pl.Series(start_us - rng.integers(3_600_000_000, 20 * 86_400_000_000, changed.height))
            changed = changed.with_columns(_mtime=modified_us, _grow=pl.Series(rng.integers(1, 4096, changed.height)))
            replaced = changed.filter(pl.col("_kind") == 0)
            replaced = replaced.with_columns(mtime_us="_mtime", size=pl.col("size") + pl.col("_grow"),
                                             md5=random_md5(rng, replaced.height))
            touched = changed.filter(pl.col("_kind") == 2).with_columns(mtime_us="_mtime")
            repeated_marks += touched["upload_k"].is_not_null().sum()
            renamed = changed.filter(pl.col("_kind") == 3).with_columns(
                filename=pl.col("filename").str.replace(r"(\.[^./]+)$", f"_r{k}${{1}}"))
            # Added: half new persons (whole folders), half a new recording (.hea + .dat) of existing persons.
            n_add = round(n * ADD)
            whole = (n_add // 2) // FILES_PER_PERSON
            fresh = person_files(np.arange(next_person, next_person + whole), rng, start_us)
            next_person += whole
            pairs = (n_add - fresh.height) // 2
            who = rng.choice(next_person - whole, size=min(pairs, next_person - whole), replace=False)
            day = (labels[k] - timedelta(days=3)).strftime("%Y%m%d")
            recording = pl.DataFrame({"p": np.repeat(who, 2), "ext": [".hea", ".dat"] * len(who)}).with_columns(
                pid=((pl.col("p") * 37 + 45) % 1_000_000), hhmmss=pl.lit(f"{10 + k % 10:02d}1500"))
            recording = recording.select(
                person="pid", folder=pl.concat_str([pl.col("pid").cast(pl.String).str.zfill(6), pl.lit(f"/Waveforms/{day}")]),
                filename=pl.concat_str([pl.col("pid").cast(pl.String).str.zfill(6), pl.lit(f"_{day}_"), "hhmmss", "ext"]),
                modality=pl.lit(MODALITIES["Waveforms"], pl.Int64),
                size=pl.when(pl.col("ext") == ".hea").then(600).otherwise(20_000_000).cast(pl.Int64),
                mtime_us=pl.Series(start_us - rng.integers(3_600_000_000, 20 * 86_400_000_000, 2 * len(who))),
                md5=random_md5(rng, 2 * len(who)))
            added = pl.concat([fresh, recording], how="diagonal")
            written: list[pl.DataFrame] = []
            for part, is_touch in ((replaced, False), (touched, True), (renamed, False), (added, False)):
                written.append(new_rows(part, next_id + sum(f.height for f in written), stamp, k, touched=is_touch))
            next_id += sum(f.height for f in written)
            active = pl.concat([active.filter(pl.col("_kind") < 0).drop("_kind"), *written])
        history.append((starts[k], "journal update", f"--version {label_text[k]}",
                        json.dumps({m: SITE for m in MODALITIES}), "None", 30.0 + files / 4000))
        tree_sizes.append(active.height)
        # `file mark_as_uploaded_local --upload-datetime <label>`: ~80% of this version's active unmarked rows.
        candidates = (pl.col("version_k") == k) & pl.col("upload_k").is_null()
        pick = rng.random(active.height) < MARK
        active = active.with_columns(upload_k=pl.when(candidates & pl.Series(pick)).then(k).otherwise("upload_k"))
        history.append((starts[k] + timedelta(days=1, hours=2), "file mark_as_uploaded_local",
                        (f"--upload-datetime {label_text[k]} --file-list /data/lists/u{k + 1}.txt "
                         "--local-journal /data/journal.db"), "None", CENTRAL, 12.5 + files / 20000))

    rows = pl.concat([*ended, active]).sort("file_id")
    folders = rows.group_by("folder").agg(pl.col("file_id").min()).sort("file_id").with_row_index("i")
    folders = folders.with_columns(src_id=(pl.col("i") + pl.col("i") // 9 + 1).cast(pl.Int64))  # ids with gaps
    rows = rows.join(folders.select("folder", "src_id"), on="folder", how="left").sort("file_id")
    version_id = {k: 1 + 4 * k for k in range(versions)}  # INSERT OR IGNORE burns an id per modality scanned
    upload_id = {k: 1 + 2 * k for k in range(versions)}

    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        con.executescript(DDL)
        with con:
            con.executemany("INSERT INTO modalities VALUES (?, ?)", [(i, m) for m, i in MODALITIES.items()])
            con.executemany("INSERT INTO versions VALUES (?, ?)", [(version_id[k], label_text[k]) for k in range(versions)])
            con.executemany("INSERT INTO uploads VALUES (?, ?)", [(upload_id[k], label_text[k]) for k in range(versions)])
            con.executemany("INSERT INTO srcpaths VALUES (?, ?)", folders.select("src_id", "folder").iter_rows())
            con.executemany("INSERT INTO command_history_v2 VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)",
                            [(when.strftime("%Y-%m-%d %H:%M:%S UTC"), COMMON, command, params, src, dest, duration)
                             for when, command, params, src, dest, duration in history])
            table = rows.select(
                "file_id", "person", "src_id", "filename", "modality", "mtime_us", "size", "md5", "valid_us", "invalid_us",
                pl.col("upload_k").replace_strict(upload_id, default=None, return_dtype=pl.Int64),
                pl.col("version_k").replace_strict(version_id, return_dtype=pl.Int64))
            for offset in range(0, table.height, INSERT_CHUNK):
                con.executemany("INSERT INTO journal_v2 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                table.slice(offset, INSERT_CHUNK).iter_rows())
            con.execute("UPDATE sqlite_sequence SET seq = seq + 3 WHERE name IN ('versions', 'uploads')")
        con.execute("PRAGMA journal_mode = DELETE")  # chorus-upload's default
    finally:
        con.close()
    marked = rows.filter(pl.col("upload_k").is_not_null())
    return {
        "rows": rows.height, "active": active.height, "tree_files": tree_sizes, "labels": label_text,
        "marked_rows": marked.height,
        "marks": marked.height - repeated_marks,
        "srcpaths": folders.height, "persons": next_person,
    }


# ----------------------------------------------------------------------------- timing


def peak_rss_children_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux


def timed(cmd: list[str], work: Path, stdout=subprocess.DEVNULL, lines: list | None = None, env=None) -> dict:
    """Wall seconds, peak RSS and exit code of a subprocess. Peak RSS: GNU time's "Maximum resident set size"
    (the largest process of the command; the import starts no worker processes), else getrusage's
    RUSAGE_CHILDREN (the largest child so far: an upper bound). `lines`: stderr lines with the seconds since
    the start at which each arrived (stage timings of a -v import)."""
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    report = work / "time.txt"
    full = [gnu_time, "-v", "-o", str(report), *cmd] if gnu_time else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=work, env=env)
    err: list[str] = []

    def drain() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            err.append(line)
            if lines is not None:
                lines.append((round(time.perf_counter() - t0, 3), line.rstrip("\n")))

    reader = threading.Thread(target=drain)
    reader.start()
    code = proc.wait()
    wall = time.perf_counter() - t0
    reader.join()
    if gnu_time:
        text = report.read_text()
        rss_kib = int(next(line for line in text.splitlines() if "Maximum resident set size" in line).split(":")[-1])
        rss_mib, rss_from = rss_kib / 1024, "GNU time -v"
    else:
        rss_mib, rss_from = peak_rss_children_mib(), "getrusage(RUSAGE_CHILDREN), an upper bound"
    return {"wall_s": round(wall, 3), "rss_mib": round(rss_mib, 1), "rss_from": rss_from, "exit_code": code,
            "stderr": "".join(err)}


PY_FETCH = ("import sqlite3, sys\ncon = sqlite3.connect(sys.argv[1])\ncur = con.execute(sys.argv[2])\nn = 0\n"
            "while batch := cur.fetchmany(200000):\n    n += len(batch)\nprint(n)\n")


def baselines(journal: Path, work: Path) -> dict:
    out = {}
    cli = shutil.which("sqlite3")
    if cli:
        out["sqlite3_cli"] = timed([cli, "-csv", str(journal), _V2_ROWS], work)
    out["python_fetch"] = timed([sys.executable, "-c", PY_FETCH, str(journal), _V2_ROWS], work)
    for name, result in out.items():
        if result["exit_code"] != 0:
            raise SystemExit(f"baseline {name} exited {result['exit_code']}:\n{result['stderr']}")
        result.pop("stderr")
    out["used"] = "sqlite3_cli" if cli else "python_fetch"
    return out


def run_import(journal: Path, db: Path, work: Path, verbose: bool) -> dict:
    cmd = [sys.executable, "-m", "chorus_batch", "import-journal", str(journal), "--db", str(db), "--to",
           "az://central/", "--json", "-v" if verbose else "-q"]
    lines: list = []
    out_file = work / "import.json"
    with out_file.open("w") as stdout:
        result = timed(cmd, work, stdout=stdout, lines=lines, env=os.environ)
    stderr = result.pop("stderr")
    if result["exit_code"] not in (0, 1):  # 1: findings
        raise SystemExit(f"import-journal exited {result['exit_code']}:\n{stderr}")
    try:
        summary = json.loads(out_file.read_text())
    except ValueError:
        raise SystemExit(f"import-journal printed no JSON summary:\n{stderr}") from None
    result["elapsed_s"] = summary["elapsed_s"]
    result["versions"] = summary["versions"]
    result["upload_marks"] = summary["upload_marks"]
    result["findings"] = len(summary["findings"])
    result["findings_rules"] = sorted({f["rule"] for f in summary["findings"]})
    if verbose:
        result["stages"] = stage_seconds(lines, result["wall_s"])
    return result


def stage_seconds(lines: list, wall: float) -> dict:
    """Seconds from each progress line of a -v import to the next: start-up (interpreter, imports), reading the
    journal (rows, trees, marks), each version's commit; the last one also holds the ledger of upload marks,
    the findings and the publication of the manifest."""
    stages, last, name = {}, 0.0, "start-up"
    for at, line in lines:
        message = line.split("chorus-batch: ", 1)[-1]
        if message.startswith(("reading ", "importing version ")):
            stages[name] = round(at - last, 3)
            last = at
            name = "read journal" if message.startswith("reading ") else "version " + message.split()[2]
    stages[name + (" + marks, findings, publish" if name.startswith("version") else "")] = round(wall - last, 3)
    return stages


def check(db: Path, expected: dict, imported: dict) -> list[str]:
    """Cheap correctness checks of the new manifest; the problems found."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        labels = [label for (label,) in con.execute("SELECT label FROM versions ORDER BY label")]
        current = con.execute("SELECT count(*) FROM source_files WHERE time_invalid IS NULL").fetchone()[0]
    finally:
        con.close()
    problems = []
    if labels != expected["labels"]:
        problems.append(f"{len(labels)} versions imported {labels}, expected {len(expected['labels'])} {expected['labels']}")
    if current != expected["active"]:
        problems.append(f"{current} current files in the manifest, the journal has {expected['active']} active rows")
    files = [v["files"] for v in imported["versions"]]
    if files != expected["tree_files"]:
        problems.append(f"files per version {files}, expected {expected['tree_files']}")
    if imported["upload_marks"] != expected["marks"]:
        problems.append(f"{imported['upload_marks']} upload marks recorded, expected {expected['marks']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000, help="files of the first version (default 1M)")
    parser.add_argument("--versions", type=int, default=5, help="`journal update` runs, one label each (default 5)")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (journal and manifest)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/import-<UTC time>.json)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="run the import with -v instead of -q, and report seconds per stage")
    args = parser.parse_args(argv)
    if args.files < 100 or args.versions < 1:
        parser.error("--files >= 100 and --versions >= 1")
    out = args.out or Path(__file__).resolve().parent / "results" / f"import-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}.json"
    work = Path(tempfile.mkdtemp(prefix="chorus-import-bench-", dir=args.workdir))
    load_at_start = os.getloadavg()
    try:
        journal, db = work / "journal.db", work / "out.sqlite"
        t0 = time.perf_counter()
        expected = generate(journal, args.files, args.versions, args.seed)
        generated_s = time.perf_counter() - t0
        print(f"journal: {expected['rows']:,} rows ({expected['active']:,} active, {expected['marked_rows']:,} marked), "
              f"{args.versions} versions, {expected['srcpaths']:,} folders, {journal.stat().st_size / 2**20:.0f} MiB, "
              f"written in {generated_s:.1f} s", flush=True)

        base = baselines(journal, work)
        print(f"baseline: {json.dumps(base)}", flush=True)
        imported = run_import(journal, db, work, args.verbose)
        print(f"import: {json.dumps(imported)}", flush=True)
        problems = check(db, expected, imported)

        baseline_s = base[base["used"]]["wall_s"]
        result = {
            "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": args.files, "versions": args.versions, "seed": args.seed, "cpus": os.cpu_count(),
            "load_average": {"start": load_at_start, "end": os.getloadavg()}, "journal": {**{k: v for k, v in expected.items() if k != "labels"},
                                                         "bytes": journal.stat().st_size, "generated_s": round(generated_s, 2)},
            "baseline": base, "import": imported,
            "rows": expected["rows"], "import_wall_s": imported["wall_s"],
            "rows_per_s": round(expected["rows"] / imported["wall_s"]),
            "import_vs_baseline": round(imported["wall_s"] / baseline_s, 2),
            "import_vs_python_fetch": round(imported["wall_s"] / base["python_fetch"]["wall_s"], 2),
            "peak_rss_mib": imported["rss_mib"], "correct": not problems, "problems": problems,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"\n{'rows':>10} {'versions':>8} {'baseline s':>10} {'import s':>9} {'rows/s':>9} {'ratio':>7} {'RSS MiB':>8}")
        print(f"{expected['rows']:>10,} {args.versions:>8} {baseline_s:>10.2f} {imported['wall_s']:>9.2f} "
              f"{result['rows_per_s']:>9,} {result['import_vs_baseline']:>6.1f}x {imported['rss_mib']:>8.0f}")
        print(f"(Python's sqlite3 fetch: {base['python_fetch']['wall_s']:.2f} s, import {result['import_vs_python_fetch']}x; "
              f"load average {load_at_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
              f"{os.cpu_count()} cores)")
        print(f"results: {out}")
        if problems:
            print("IMPORT WRONG:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
