"""One read per file (issue 15): the hashing worker that reads a file also parses the header facts
validation needs, from the same bytes; validation then finds them cached and opens no file again.

- a first run (in threads and in forked workers) opens every site file exactly once, counted by an audit
  hook in a subprocess (`open` fires for os.open and io.open alike, in forked workers too);
- its findings and cached facts equal those of a run that validates in a separate pass
  (`run --no-validate`, then `validate` on the same manifest, which reads the headers itself);
- the hashing reader: the MD5 of every byte once, in order, whatever the parser reads or seeks; a big
  OMOP CSV's id columns streamed while hashing, keeping a bounded window, never the file;
- the classification of which files need facts has one definition (validate.kinds.KIND_RULES) whose
  per-path form (kind_of, used by the workers) and vectorised form (_kind_expr) agree, and agree with
  the expression it replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from chorus_batch import hashing, workers
from chorus_batch.sources import base
from chorus_batch.sources.base import KEEP_BYTES, HashingReader, parse_through
from chorus_batch.sources.local import LocalSource
from chorus_batch.validate import readers
from chorus_batch.validate.kinds import KIND_RULES, _kind_expr, _path_columns, kind_of
from chorus_batch.validate.rules import (FORBIDDEN_TABLES, KIND_DICOM, KIND_EDF, KIND_LINKS, KIND_MAPPING, KIND_MARKDOWN,
                                         KIND_OMOP, KIND_PERSON, KIND_PROCEDURES, KIND_RECORDS, KIND_REGISTRY, KIND_VISITS, KIND_WFDB,
                                         LINKS_TABLE, OMOP_KEYS)
from chorus_batch.validate.run import validate_manifest
from conftest import query, run_site
from sitegen import build_clean_site, write

REPO = Path(__file__).resolve().parents[1]


def broken_site(root: Path) -> Path:
    """A clean site, plus files whose facts are findings: bad headers, a non-DICOM .dcm, odd OMOP CSVs."""
    build_clean_site(root, persons=3)
    write(root, "P900/Waveforms/Telemetry/1/1.hea", "not a header\n")
    write(root, "P900/Waveforms/Telemetry/1/RECORDS", b"\x00\x01binary")
    write(root, "P900/Images/CT/1/2/000.dcm", b"DICM" * 50)
    write(root, "P900/Images/CT/1/2/001.dcm", b"")
    write(root, "OMOP/specimen.csv", "specimen_id,person_id\n1,2\n")
    write(root, "OMOP/measurement.csv", "a;b;c\n1;2;3\n")
    write(root, "OMOP/death.csv", "")
    write(root, "Metadata/Extra_mapping.csv", "signal_id,sampling_rate\nx,-1\n")
    write(root, "registry.csv", "src_file,trg_file\n")
    # waveforms: a header named otherwise, one naming a signal file by '..', one of two formats in a file, a truncated
    # .dat, a frequency that is no number, a header with a byte-order mark, comments, blank lines and CRLF, one over
    # the reader's byte cap, one in UTF-16; a multi-segment record of a missing segment, a gap and a segment of another
    # frequency; a RECORDS file listing a record absent, itself and one by '..'
    t = "P900/Waveforms/Telemetry"
    write(root, f"{t}/2/2.hea", "3 1 250 100\n2.dat 16 200/mV 16 0 0 0 0 II\n")
    write(root, f"{t}/2/2.dat", bytes(200))
    write(root, f"{t}/3/3.hea", "3 1 250 100\n../2/2.dat 16 200/mV 16 0 0 0 0 II\n")
    write(root, f"{t}/4/4.hea", "4 2 250 100\n4.dat 16 200/mV 16 0 0 0 0 II\n4.dat 212 200/mV 12 0 0 0 0 V\n")
    write(root, f"{t}/4/4.dat", bytes(399))
    write(root, f"{t}/5/5.hea", "5 1 250.5.5 100\n5.dat 16 200/mV 16 0 0 0 0 II\n")
    write(root, f"{t}/6/6.hea", b"\xef\xbb\xbf# c\r\n\r\n6 1 250 100 10:00:00.5 1/2/2020\r\n# d\r\n6.dat 16 200/mV 16 0 0 0 0 II\r\n")
    write(root, f"{t}/6/6.dat", bytes(199))
    write(root, f"{t}/7/7.hea", "7 0\n#" + "x" * (readers.MAX_TEXT_BYTES + 1) + "\n")
    write(root, f"{t}/8/8.hea", "8 0\n".encode("utf-16"))
    write(root, f"{t}/9/9.hea", "9/4 1 250 300\n9_layout 0\n9_0001 100\n~ 100\n9_0002 100\n")
    write(root, f"{t}/9/9_layout.hea", "9_layout 0 250 0\n")
    write(root, f"{t}/9/9_0001.hea", "9_0001 1 500 100\n9_0001.dat 16 200/mV 16 0 0 0 0 II\n")
    write(root, f"{t}/9/9_0001.dat", bytes(200))
    write(root, "P900/Waveforms/RECORDS", "Telemetry/2/2\nTelemetry/99/99\nRECORDS\n../P900/Waveforms/Telemetry/4/4\n")
    return root


# ---------------------------------------------------------------- a first run opens each file once

_COUNT_OPENS = r"""
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
site = os.path.realpath(sys.argv[2]) + os.sep

def hook(event, args):
    # (a folder opened to see it is no link, as the walk does, reads no file: not counted)
    if event == "open" and isinstance(args[0], (str, bytes)) and not (
            isinstance(args[2], int) and args[2] & getattr(os, "O_DIRECTORY", 0)):
        path = os.fsdecode(args[0])
        if path.startswith(site):
            os.write(log, (path[len(site):] + "\n").encode())  # O_APPEND: one line per open, forked workers too

sys.addaudithook(hook)
import chorus_batch.hashing
chorus_batch.hashing.PROCESS_MIN_FILES = int(sys.argv[3])  # 1: forked workers even for a small site
from chorus_batch.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _opens(tmp_path: Path, site: Path, *args: str, process_min: int = 10**9) -> Counter:
    log = tmp_path / f"opens-{len(list(tmp_path.iterdir()))}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-c", _COUNT_OPENS, str(log), str(site), str(process_min), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


def _site_files(site: Path) -> set[str]:
    return {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}


@pytest.mark.parametrize("workers,process_min", [(1, 10**9), (2, 1)], ids=["threads", "forked-workers"])
def test_a_first_run_opens_every_file_once(tmp_path, workers, process_min):
    site = broken_site(tmp_path / "site")
    db = tmp_path / "manifest.sqlite"
    opens = _opens(tmp_path, site, "run", "--site", str(site), "--db", str(db), "--workers", str(workers), "-q",
                   process_min=process_min)
    assert set(opens) == _site_files(site), "every file is read (hashed), and nothing else under the site"
    assert [path for path, n in opens.items() if n > 1] == [], "no file is opened twice"
    facts = query(db, "SELECT kind, count(*) FROM file_facts GROUP BY kind")
    assert {KIND_WFDB, KIND_DICOM, KIND_RECORDS, KIND_PERSON, KIND_OMOP, KIND_MAPPING, KIND_MARKDOWN} <= dict(facts).keys()
    ((version, headers_read),) = query(db, "SELECT version, headers_read FROM validations")
    assert headers_read == 0, "validation found every header's facts cached"
    assert query(db, "SELECT count(*) FROM findings WHERE version = ?", (version,))[0][0] > 0


def test_validate_on_a_manifest_without_facts_reads_the_headers_itself(tmp_path):
    """The separate read path still works (e.g. an older manifest): `run --no-validate` parses nothing."""
    site = broken_site(tmp_path / "site")
    db = tmp_path / "manifest.sqlite"
    first = _opens(tmp_path, site, "run", "--site", str(site), "--db", str(db), "--no-validate", "-q")
    assert max(first.values()) == 1 and query(db, "SELECT count(*) FROM file_facts") == [(0,)]
    again = _opens(tmp_path, site, "validate", "--db", str(db), "-q")
    assert again and max(again.values()) == 1 and all(kind_of(path) for path in again)
    assert query(db, "SELECT headers_read FROM validations") == [(len(again),)]


# ---------------------------------------------------------------- the same findings as a separate pass

def _table(db: Path, sql: str) -> list[tuple]:
    return sorted(query(db, sql))


@pytest.mark.parametrize("workers,process_min", [(1, hashing.PROCESS_MIN_FILES), (2, 1)],
                         ids=["threads", "forked-workers"])
def test_findings_equal_those_of_a_separate_validation_pass(tmp_path, monkeypatch, workers, process_min):
    monkeypatch.setattr(hashing, "PROCESS_MIN_FILES", process_min)
    site = broken_site(tmp_path / "site")
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    together = run_site(site, one, workers=workers)
    separate = run_site(site, two, workers=workers, validate_site=False)
    assert separate.findings is None and query(two, "SELECT count(*) FROM file_facts") == [(0,)]
    _label, findings = validate_manifest(str(two), argv=["validate"], workers=workers)
    assert together.findings is not None and together.findings.height > 5
    assert {"wfdb.record_name", "wfdb.bad_header", "wfdb.format", "wfdb.dat_size", "wfdb.missing_segment",
            "wfdb.segment_rate", "records.absent"} <= set(together.findings["rule"]), "broken_site's waveform cases"
    assert together.findings.sort("srcfile", "rule", "message").equals(findings.sort("srcfile", "rule", "message"))
    assert (_table(one, "SELECT kind, md5, facts FROM file_facts")
            == _table(two, "SELECT kind, md5, facts FROM file_facts")), "the same facts, byte for byte"
    assert query(one, "SELECT headers_read FROM validations") == [(0,)]


def _slow_hash_chunk(*args, **kwargs):
    """workers.hash_chunk, taking its time (at module level: a forked worker finds it by name)."""
    import time

    time.sleep(0.05)
    return workers.hash_chunk(*args, **kwargs)


@pytest.mark.parametrize("workers,process_min", [(1, hashing.PROCESS_MIN_FILES), (2, 1)],
                         ids=["threads", "forked-workers"])
def test_facts_are_cached_in_pieces_as_they_are_parsed_not_held_to_the_end(tmp_path, monkeypatch, workers, process_min):
    """A first run held every fact it parsed until its hashing ended (1M files: ~300 MB at its peak); now they are
    cached every FACTS_HANDED_EVERY, while the hashing goes on, and the cache and the findings are the same."""
    from chorus_batch.store.validation import ValidationCache

    monkeypatch.setattr(hashing, "PROCESS_MIN_FILES", process_min)
    site = broken_site(tmp_path / "site")
    whole, pieces = tmp_path / "whole.sqlite", tmp_path / "pieces.sqlite"
    one_go = run_site(site, whole, workers=workers)
    saved: list[int] = []
    save_facts = ValidationCache.save_facts

    def counted(self, new_facts, **kwargs):
        saved.append(new_facts.height)
        return save_facts(self, new_facts, **kwargs)

    monkeypatch.setattr(ValidationCache, "save_facts", counted)
    monkeypatch.setattr(hashing, "FACTS_HANDED_EVERY", 4, raising=False)
    monkeypatch.setattr(hashing, "CHUNK_FILES", 8)
    monkeypatch.setattr(hashing, "hash_chunk", _slow_hash_chunk)  # the run's thread has time to take each piece
    in_pieces = run_site(site, pieces, workers=workers)
    assert len(saved) > 2 and sum(saved) == query(pieces, "SELECT count(*) FROM file_facts")[0][0], saved
    assert (_table(whole, "SELECT kind, md5, facts FROM file_facts")
            == _table(pieces, "SELECT kind, md5, facts FROM file_facts"))
    assert in_pieces.findings is not None and one_go.findings is not None
    assert in_pieces.findings.equals(one_go.findings)
    assert query(pieces, "SELECT headers_read FROM validations") == [(0,)]


def test_cached_facts_stay_as_they_are(tmp_path):
    """Facts already cached for a content are not replaced by the ones parsed while hashing."""
    from chorus_batch.store import Manifest

    site = broken_site(tmp_path / "site")
    db = tmp_path / "manifest.sqlite"
    run_site(site, db)
    content = b"specimen_id,person_id,x\n1,2,3\n"
    kept = '{"columns":["kept"],"delimiter":","}'
    Manifest(db).validation.save_facts(pl.DataFrame({"kind": [KIND_OMOP], "md5": [hashlib.md5(content).hexdigest()],
                                                     "facts": [kept]}))
    write(site, "OMOP/specimen.csv", content)  # a new size: parsed as it is hashed, but its facts are cached
    run_site(site, db)
    assert query(db, "SELECT facts FROM file_facts WHERE md5 = ?", (hashlib.md5(content).hexdigest(),)) == [(kept,)]


def test_content_read_again_only_to_be_verified_or_rehashed_is_not_parsed(tmp_path, monkeypatch):
    """A file read again with its size unchanged (--rehash, a new mtime, re-verification) most likely has facts
    cached: it is not parsed while hashed (no parser imported for it); validation reads it if its facts are not."""
    site = broken_site(tmp_path / "site")
    db = tmp_path / "manifest.sqlite"
    run_site(site, db)
    parsed: list[str] = []
    original = readers._parse_text
    monkeypatch.setattr(readers, "_parse_text", lambda kind, f: parsed.append(kind) or original(kind, f))
    again = run_site(site, db, rehash=True)
    assert parsed == [] and again.n_hashed == len(_site_files(site))
    assert query(db, "SELECT max(headers_read) FROM validations") == [(0,)]
    write(site, "OMOP/specimen.csv", "specimen_id,person_id,x\n1,2,3\n")  # a new size: parsed as it is hashed
    run_site(site, db)
    assert parsed == [KIND_OMOP]


@pytest.mark.parametrize("workers,process_min", [(1, 10**9), (2, 1)], ids=["threads", "forked-workers"])
def test_a_file_rewritten_at_the_same_size_is_parsed_as_it_is_hashed(tmp_path, workers, process_min):
    """A header rewritten with other content of the same size (a new mtime, the size unchanged) was hashed
    without its facts and read again by validation: a 5%-mutated run of 1M small files read ~8,000 headers
    twice. Its bytes are now kept while it is hashed and parsed when the MD5 is not the recorded one; a file
    only touched (same content) is not parsed."""
    site = broken_site(tmp_path / "site")
    db = tmp_path / "manifest.sqlite"
    assert _opens(tmp_path, site, "run", "--site", str(site), "--db", str(db), "-q") != Counter()
    header = next(p for p in sorted(site.rglob("*.hea")) if " 2 125 250 " in p.read_text())  # a record's header
    text = header.read_text()
    rewritten = text.replace(" 2 125 250 ", " 2 500 250 ", 1)
    assert rewritten != text and len(rewritten) == len(text)
    time_before = header.stat().st_mtime_ns
    header.write_text(rewritten)
    os.utime(header, ns=(time_before + 10**9, time_before + 10**9))
    touched = next(p for p in site.rglob("*.hea") if p != header)
    os.utime(touched, ns=(touched.stat().st_mtime_ns + 10**9,) * 2)
    opens = _opens(tmp_path, site, "run", "--site", str(site), "--db", str(db), "--workers", str(workers), "-q",
                   process_min=process_min)
    name, touched_name = (str(p.relative_to(site)) for p in (header, touched))
    assert opens[name] == 1 and opens[touched_name] == 1, opens
    assert query(db, "SELECT headers_read FROM validations ORDER BY version DESC LIMIT 1") == [(0,)]
    md5 = hashlib.md5(rewritten.encode()).hexdigest()
    ((facts,),) = query(db, "SELECT facts FROM file_facts WHERE kind = ? AND md5 = ?", (KIND_WFDB, md5))
    assert json.loads(facts)["fs"] == 500.0


# ---------------------------------------------------------------- the hashing reader

def _reader(data: bytes) -> HashingReader:
    return HashingReader(io.BytesIO(data).read, hashlib.md5(), len(data))


def test_the_hashing_reader_hashes_every_byte_once_whatever_the_parser_does():
    data = os.urandom(3 * KEEP_BYTES + 12345)

    def wander(f):
        f.read(7)
        f.seek(0)
        head = f.read(100)
        f.seek(10, io.SEEK_CUR)
        f.seek(0, io.SEEK_END)
        f.seek(5)
        return head[:4].hex()

    reader = _reader(data)
    assert parse_through(wander, reader) == data[:4].hex()
    assert reader.finish() == len(data) and reader.digest.hexdigest() == hashlib.md5(data).hexdigest()
    # a parser that streams far and then seeks back to the start: its result is not trusted
    reader = _reader(data)

    def back_to_start(f):
        while f.read(1 << 20):
            pass
        f.seek(0)
        return "trusted?"

    assert parse_through(back_to_start, reader) is None and reader.lost
    assert reader.finish() == len(data) and reader.digest.hexdigest() == hashlib.md5(data).hexdigest()


def test_a_big_csv_is_streamed_while_hashed_keeping_a_window(tmp_path, monkeypatch):
    """person.csv's ids from the hashing worker, parsed as the bytes go by: the same facts as the separate
    read path, while the reader keeps at most a bounded window of the file."""
    rows = "".join(f"{i % 70000}, {i}\n" for i in range(900_000))
    data = ("person_id,year_of_birth\n" + rows).encode()
    (tmp_path / "OMOP").mkdir()
    (tmp_path / "OMOP/person.csv").write_bytes(data)
    kept: list[int] = []
    original = HashingReader._fill

    def watching(self, end):
        original(self, end)
        kept.append(len(self._kept))

    monkeypatch.setattr(HashingReader, "_fill", watching)
    monkeypatch.setattr(base, "KEEP_BYTES", 256 << 10)
    out = LocalSource(tmp_path).hash_file("OMOP/person.csv", bytearray(64 * 1024), readers.parser(KIND_PERSON))
    assert out.md5 == hashlib.md5(data).hexdigest() and out.size == len(data)
    assert max(kept) < (256 << 10) + (5 << 20) < 2 * (5 << 20) < len(data)  # the first bytes, then ~ one 4 MiB block
    assert json.loads(out.facts) == readers.read_facts(LocalSource(tmp_path), "OMOP/person.csv", KIND_PERSON)
    assert len(json.loads(out.facts)["person_id"].split("\n")) == 70000


def test_a_worker_returns_facts_with_the_hashes(tmp_path):
    site = broken_site(tmp_path / "site")
    paths = sorted(p for p in _site_files(site))
    chunk = workers.hash_chunk(LocalSource(site), paths, readers.FORK_SAFE_KINDS,
                               readers.READER_KINDS - readers.FORK_SAFE_KINDS)
    parsed = {paths[k]: kind for k, kind, _ in chunk.facts}
    whole = {paths[k]: kind for k, kind, _ in chunk.contents}
    assert parsed == {p: kind_of(p) for p in paths if kind_of(p) in readers.FORK_SAFE_KINDS}
    assert whole == {p: kind_of(p) for p in paths if kind_of(p) in (KIND_MAPPING, KIND_REGISTRY)}
    assert not chunk.errors


# ---------------------------------------------------------------- one classification

def _legacy_kind_expr() -> pl.Expr:
    """The expression kinds.py had before KIND_RULES: the reference kind_of must agree with."""
    in_person = (pl.col("_n") >= 3) & ~pl.col("_top_l").is_in(["omop", "metadata"])
    waveforms = in_person & (pl.col("_second_l") == "waveforms")
    table = pl.col("_table")
    omop = (pl.col("_top_l") == "omop") & (pl.col("_n") == 2)
    name_l = pl.col("_name").str.to_lowercase()
    metadata = (pl.col("_top_l") == "metadata") & (pl.col("_n") == 2)
    at_root = pl.col("_n") == 1
    return (
        pl.when(waveforms & (pl.col("_ext_l") == "hea")).then(pl.lit(KIND_WFDB))
        .when(waveforms & pl.col("_ext_l").is_in(["edf", "bdf"])).then(pl.lit(KIND_EDF))  # (since edf_header.v1)
        .when((waveforms | at_root) & (pl.col("_name") == "RECORDS")).then(pl.lit(KIND_RECORDS))
        .when(metadata & name_l.is_in(["readiness.md", "submission.md"])).then(pl.lit(KIND_MARKDOWN))
        .when(at_root & (name_l == "submission.md")).then(pl.lit(KIND_MARKDOWN))  # (READINESS.md: Metadata/ only)
        .when(metadata & name_l.str.ends_with("_mapping.csv")).then(pl.lit(KIND_MAPPING))
        .when((metadata | at_root) & name_l.str.contains("registry") & (pl.col("_ext_l") == "csv"))
        .then(pl.lit(KIND_REGISTRY))
        .when(in_person & (pl.col("_second_l") == "images") & (pl.col("_ext_l") == "dcm")).then(pl.lit(KIND_DICOM))
        .when(omop & (table == "person")).then(pl.lit(KIND_PERSON))
        .when(omop & (table == "visit_occurrence")).then(pl.lit(KIND_VISITS))
        .when(omop & (table == "procedure_occurrence")).then(pl.lit(KIND_PROCEDURES))
        .when(omop & (table == LINKS_TABLE)).then(pl.lit(KIND_LINKS))
        .when(omop & table.is_in([*OMOP_KEYS, *FORBIDDEN_TABLES])).then(pl.lit(KIND_OMOP))
        .otherwise(pl.lit(None, pl.String))
        .alias("legacy")
    )


def _paths() -> list[str]:
    tops = ["P001", "omop", "OMOP", "Metadata", "metadata", "x.csv"]
    seconds = ["Waveforms", "waveforms", "Images", "IMAGES", "Metadata", "other"]
    names = ["a.hea", "A.HEA", ".hea", "a.hea.bak", "a.edf", "B.BDF", "a.edf.gz", "RECORDS", "records", "README.md", "readiness.md", "Submission.MD",
             "x_mapping.csv", "X_Mapping.CSV", "site_registry.csv", "Registry.Csv", "registry.txt", "person.csv",
             "Person.CSV", "person.csv.gz", "visit_occurrence.csv", "procedure_occurrence.csv", f"{LINKS_TABLE}.csv", "measurement.csv",
             "specimen.csv", "foo.csv", "noext", "a.b.dcm", "x.DCM", "x.dcm.", "person", "."]
    paths = list(names)
    for top in tops:
        paths += [f"{top}/{n}" for n in names]
        for second in seconds:
            paths += [f"{top}/{second}/{n}" for n in names]
            paths += [f"{top}/{second}/s/{n}" for n in names]
    return paths


def test_kind_of_and_the_vectorised_kinds_agree_with_each_other_and_the_old_expression():
    paths = _paths()
    frame = _path_columns(pl.DataFrame({"srcfile": paths})).with_columns(_kind_expr(), _legacy_kind_expr()).collect()
    assert frame["kind"].to_list() == frame["legacy"].to_list()
    assert [kind_of(p) for p in paths] == frame["kind"].to_list()
    assert {kind_of(p) for p in paths} - {None} == {rule.kind for rule in KIND_RULES}


def test_a_check_classifies_each_file_once_and_its_site_keeps_that_kind():
    """check_files classifies every file once (kinds.with_kind, from the few path columns it reads): the same kind as
    kind_of of each path, and the rules' _Site keeps it rather than classifying every file again (issue 15)."""
    from chorus_batch.validate.kinds import facts_needed, with_kind
    from chorus_batch.validate.site import _Site
    from chorus_batch.frames import FACTS_SCHEMA
    from chorus_batch.store.validation import VALIDATION_SCHEMA

    paths = _paths()
    current = pl.DataFrame({"srcfile": paths, "md5": [f"{i:032x}" for i in range(len(paths))]}).with_columns(
        [pl.lit(None, dtype).alias(c) for c, dtype in VALIDATION_SCHEMA.items() if c not in ("srcfile", "md5")])
    classified = with_kind(current)
    assert classified.columns == [*current.columns, "kind"]
    assert classified["kind"].to_list() == [kind_of(p) for p in paths]
    assert facts_needed(classified).rows() == facts_needed(current).rows()
    # (a kind given is kept: here none, so no rule looks inside any file; the site classified them again before)
    site = _Site(classified.with_columns(kind=pl.lit(None, pl.String)), pl.DataFrame(schema=FACTS_SCHEMA))
    assert site.files["kind"].null_count() == len(paths)
    assert _Site(current, pl.DataFrame(schema=FACTS_SCHEMA)).files["kind"].to_list() == classified["kind"].to_list()


def test_the_kinds_in_a_batch_are_those_kind_of_finds_in_it():
    """kinds_in classifies one path of each class it thinks decides a kind: a path with a kind batched with the
    paths of its folder that have none shows any class that holds both (a rule testing more of the name than
    kinds_in keys on) as its kind missing."""
    from chorus_batch.validate.kinds import kinds_in

    paths = _paths()
    assert kinds_in(pl.Series(paths, dtype=pl.String)) == {kind_of(p) for p in paths} - {None}
    folders: dict[str, list[str]] = {}
    for p in paths:
        folders.setdefault(p.rpartition("/")[0], []).append(p)
    for inside in folders.values():
        none = [p for p in inside if kind_of(p) is None]
        for p in inside:
            if kind_of(p) is not None:
                assert kinds_in(pl.Series([*none, p], dtype=pl.String)) == {kind_of(p)}, p


def test_a_remote_source_parses_the_bytes_it_downloads_to_hash(tmp_path):
    """fsspec sources (threads) hand the parser the bytes as they stream: the same facts as a separate read."""
    import fsspec

    from chorus_batch.sources.remote import FsspecSource

    site = broken_site(tmp_path / "site")
    fs = fsspec.filesystem("memory")
    for rel in _site_files(site):
        fs.pipe(f"/one-read-site/{rel}", (site / rel).read_bytes())
    remote, local = FsspecSource("memory://one-read-site"), LocalSource(site)
    try:
        wanted = [(rel, kind_of(rel)) for rel in sorted(_site_files(site)) if kind_of(rel)]
        assert len(wanted) > 20
        for rel, kind in wanted:
            out = remote.hash_file(rel, bytearray(64 * 1024), readers.parser(kind))
            assert out.md5 == hashlib.md5((site / rel).read_bytes()).hexdigest()
            assert json.loads(out.facts) == readers.read_facts(local, rel, kind), rel
    finally:
        fs.rm("/one-read-site", recursive=True)


def test_parsing_wfdb_headers_does_not_import_wfdb_or_pandas():
    """wfdb's header grammar is loaded from its module file alone: importing wfdb imports pandas, 0.45-0.7 s
    of a first run's start-up before any hashing worker starts."""
    code = ("import sys\nfrom chorus_batch.validate import readers\nreaders.prepare({readers.KIND_WFDB})\n"
            "facts = readers.parse_wfdb_header('r 1 250 1000\\nr.dat 16 200 12 0 0 0 0 II\\n')\n"
            "print(facts['fs'], 'pandas' in sys.modules, 'wfdb' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.split() == ["250.0", "False", "False"], done.stderr


def test_a_run_validates_with_the_facts_the_cache_keeps(tmp_path):
    """Facts parsed while hashing are cached before the commit, except for contents the cache already had
    facts of: those are validated with the cached facts, as a separate validation pass would be."""
    from chorus_batch.store import Manifest

    site = broken_site(tmp_path / "site")
    db = tmp_path / "manifest.sqlite"
    run_site(site, db)
    cache = Manifest(db).validation
    kept = '{"columns":["kept"],"delimiter":","}'
    old, new = hashlib.md5(b"old").hexdigest(), hashlib.md5(b"new").hexdigest()
    cache.save_facts(pl.DataFrame({"kind": [KIND_OMOP], "md5": [old], "facts": [kept]}))
    saved = cache.save_facts(pl.DataFrame({"kind": [KIND_OMOP] * 3, "md5": [old, new, new],
                                           "facts": ['{"columns":["fresh"]}'] * 3}), replace=False)
    assert sorted(saved.rows()) == sorted([(KIND_OMOP, new, '{"columns":["fresh"]}'), (KIND_OMOP, old, kept)])

    # end to end: a CSV whose content's facts are cached gets the finding of the cached facts (no specimen_id column)
    content = b"specimen_id,person_id,x\n1,2,3\n"
    cache.save_facts(pl.DataFrame({"kind": [KIND_OMOP], "md5": [hashlib.md5(content).hexdigest()], "facts": [kept]}))
    write(site, "OMOP/specimen.csv", content)
    run_site(site, db)
    separate = tmp_path / "again.sqlite"
    shutil.copy(db, separate)
    with_run = query(db, "SELECT rule, srcfile, message FROM findings WHERE version = (SELECT max(label) FROM versions) "
                         "ORDER BY 1, 2, 3")
    subprocess.run([sys.executable, "-m", "chorus_batch", "validate", "--db", str(separate), "--force", "-q"],
                   cwd=REPO, capture_output=True, timeout=300)
    assert with_run == query(separate, "SELECT rule, srcfile, message FROM findings WHERE version = "
                                       "(SELECT max(label) FROM versions) ORDER BY 1, 2, 3")


def _killed_at(point: str, command: list[str]) -> None:
    """Run `command` (a chorus-batch run, checkpointing after every chunk) until it pauses at the fault-injection
    point `point`; SIGKILL it there."""
    import signal

    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": point, "CHORUS_BATCH_CHECKPOINT_S": "0"})
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if f"test pause at {point}" in line:
                break
        else:
            raise AssertionError(f"the run ended ({proc.wait()}) before {point}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def _hour_old(site: Path) -> None:
    """Out of the racy window: a rerun may take every hash a killed run checkpointed."""
    for path in site.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_facts_parsed_while_hashing_are_cached_before_the_commit_and_outlive_a_killed_run(tmp_path):
    """A run caches the facts it parsed before it commits: a run killed in its commit leaves them (and no version),
    and the rerun, its hashes taken from the checkpoint, validates with them as a clean run does."""
    site = broken_site(tmp_path / "site")
    _hour_old(site)
    db, clean = tmp_path / "killed.sqlite", tmp_path / "clean.sqlite"
    command = [sys.executable, "-m", "chorus_batch", "run", "--site", str(site), "--verify-sample", "0", "--json"]
    _killed_at("commit", [*command, "--db", str(db), "-q"])
    assert query(db, "SELECT count(*) FROM versions") == [(0,)]
    cached = query(db, "SELECT kind, md5, facts FROM file_facts ORDER BY 1, 2")

    again = subprocess.run([*command, "--db", str(db)], cwd=REPO, capture_output=True, text=True, timeout=300)
    single = subprocess.run([*command, "--db", str(clean)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert json.loads(again.stdout)["files_hashed"] == 0  # every hash from the checkpoint: no file read again
    assert json.loads(single.stdout)["files_hashed"] > 0
    assert cached == query(clean, "SELECT kind, md5, facts FROM file_facts ORDER BY 1, 2") and len(cached) > 10
    findings = "SELECT rule, srcfile, message FROM findings ORDER BY 1, 2, 3"
    assert query(db, findings) == query(clean, findings) and query(db, findings)


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_a_run_killed_while_hashing_checkpoints_its_facts_and_the_rerun_reads_only_the_rest(tmp_path):
    """The facts a killed run parsed are checkpointed with its hashes: the rerun opens only the files the killed
    run had not hashed (validation included), and finds what a clean run finds."""
    from chorus_batch.checkpoint import Checkpoint
    from chorus_batch.store import Manifest

    site = broken_site(tmp_path / "site")
    _hour_old(site)
    db, clean = tmp_path / "killed.sqlite", tmp_path / "clean.sqlite"
    run = ["run", "--site", str(site), "--verify-sample", "0", "--workers", "1"]
    _killed_at("checkpoint", [sys.executable, "-m", "chorus_batch", *run, "--db", str(db), "-q"])
    checkpoint = Checkpoint.open(db, *Manifest(db).state_identity(), writable=False)
    assert checkpoint is not None
    done = checkpoint.known()
    assert 0 < done.height < len(_site_files(site)) and done["facts"].drop_nulls().len() > 0

    opens = _opens(tmp_path, site, *run, "--db", str(db), "-q")
    assert set(opens) == _site_files(site) - set(done["srcfile"]), "only the files not hashed before are opened"
    assert max(opens.values()) == 1
    assert query(db, "SELECT headers_read FROM validations") == [(0,)], "every header's facts known"
    _opens(tmp_path, site, *run, "--db", str(clean), "-q")
    for sql in ("SELECT kind, md5, facts FROM file_facts ORDER BY 1, 2", "SELECT rule, srcfile, message FROM findings "
                "ORDER BY 1, 2, 3", "SELECT srcfile, md5 FROM source_files ORDER BY 1"):
        assert query(db, sql) == query(clean, sql)


_TWO = st.text("0123456789", min_size=1, max_size=2)


# (any text the record line's expression gives as base_time / base_date: wfdb/io/header.py)
@given(st.times().map(lambda t: t.strftime("%H:%M:%S")) | st.tuples(_TWO, _TWO, _TWO).map(":".join) | st.from_regex(r"\d{,2}:?\d{,2}:?\d{,2}\.?\d{,6}", fullmatch=True))
@example("00:00:\u06600")  # another script's digit: the fast path took it, wfdb's strptime refuses it
def test_a_header_base_time_reads_as_wfdb_strptime_reads_it(text):
    """The base time's fast path gives what wfdb's strptime gives, and fails where it fails (with its message)."""
    grammar = readers._wfdb_grammar()
    assert _outcome(lambda: readers._iso_time(grammar, text)) == _outcome(lambda: grammar.wfdb_strptime(text).isoformat())


@given(st.dates().map(lambda d: f"{d.day:02}/{d.month:02}/{d.year:04}")
       | st.tuples(_TWO, _TWO, st.text("0123456789", min_size=1, max_size=5)).map("/".join)
       | st.from_regex(r"\d{,2}/?\d{,2}/?\d{,4}", fullmatch=True))
@example("01/01/\u0662020")
def test_a_header_base_date_reads_as_strptime_reads_it(text):
    expected = _outcome(lambda: datetime.strptime(text, "%d/%m/%Y").date().isoformat())
    assert _outcome(lambda: readers._iso_date(text)) == expected


def _outcome(read):
    try:
        return read()
    except ValueError as exc:
        return f"ValueError: {exc}"
