"""Deterministic synthetic sites for tests and benchmarks.

`make_testdata(out, ...)` writes `out/first` and `out/second`. Both come from one
plan: every file has a content id, and the second snapshot keeps most files,
modifies some (same name, new bytes), renames some (same bytes, new name),
deletes some and adds new ones, as drawn by the seed. `sync_tree` turns a tree
written from one snapshot into the other in place (the benchmarks' mutated runs).
All layouts are covered: OMOP/, Metadata/, flat waveforms (with and without a
session folder, with segments), WFDB SOP v2 sessions, and DICOM study/series.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

_EPOCH = datetime(2020, 1, 1)
_FILLER = random.Random(20240229).randbytes(1 << 20)
OMOP_TABLES = ("person", "observation_period", "visit_occurrence", "measurement", "waveform_visit_links")

# Of the files that change between the snapshots (change_fraction of all files):
_SHARES = (("modify", 0.4), ("rename", 0.2), ("delete", 0.2))  # the rest are additions


@dataclass(frozen=True)
class Spec:
    persons: int = 20
    files_per_person: int = 12
    size: int = 1024
    seed: int = 0
    change_fraction: float = 0.2


def person_id(i: int) -> str:
    return f"{i + 1:06d}"  # text with leading zeros, as sites store them


def file_path(pid: str, k: int) -> str:
    """The path of the person's k-th file; the layout cycles with k."""
    stamp_dt = _EPOCH + timedelta(hours=k, minutes=int(pid) % 60)
    stamp = f"{pid}_{stamp_dt:%Y%m%d_%H%M%S}"
    layout = k % 5
    if layout == 0:  # flat, no session folder
        return f"{pid}/Waveforms/{stamp}_3600.dat"
    if layout == 1:  # flat inside a session folder, one segment
        return f"{pid}/Waveforms/{stamp}/{stamp}_1800_{k % 7 + 1:04d}.dat"
    if layout == 2:  # WFDB SOP v2 session
        session = f"{stamp}"
        ext = (".hea", ".dat", "n.csv")[(k // 5) % 3]
        return f"{pid}/Waveforms/{session}/{session}{ext}"
    if layout == 3:  # lower-case folder name, flat
        return f"{pid}/waveforms/{stamp}_60.csv"
    study, series = f"ST{k // 25:04d}", f"SE{k // 5 % 5:02d}"
    return f"{pid}/Images/{study}/{series}/{stamp}_CT_{series}_{k:05d}.dcm"


def snapshot(spec: Spec, persons: Iterable[int] | None = None, *, second: bool = False) -> dict[str, str]:
    """path -> content id of the person folders of one snapshot (site files: _site_files)."""
    files: dict[str, str] = {}
    m = spec.files_per_person
    for i in persons if persons is not None else range(spec.persons):
        pid = person_id(i)
        rng = random.Random(spec.seed * 1_000_003 + i)
        for k in range(m):
            content = f"{pid}:{k}"
            path = file_path(pid, k)
            if second:
                fate = _fate(rng.random(), spec.change_fraction)
                if fate == "modify":
                    content += ":v2"
                elif fate == "rename":
                    path = file_path(pid, k + 10 * m + 5)  # same layout, a name no other file has
                elif fate == "delete":
                    continue
                elif fate == "add":
                    files[file_path(pid, m + k)] = f"{pid}:{m + k}"
            files[path] = content
    return files


def _site_files(second: bool) -> dict[str, str]:
    files = {f"OMOP/{t}.csv": f"omop:{t}" + (":v2" if second and t in ("person", "measurement") else "") for t in OMOP_TABLES}
    files["Metadata/site_description.json"] = "meta:site"
    return files


def _fate(x: float, fraction: float) -> str:
    if x >= fraction:
        return "keep"
    x /= fraction
    for fate, share in _SHARES:
        if x < share:
            return fate
        x -= share
    return "add"


def content_bytes(content_id: str, size: int, seed: int) -> Iterable[bytes]:
    """`size` deterministic bytes for a content id, in chunks."""
    head = f"chorus-testdata seed={seed} content={content_id}\n".encode()
    if size <= len(head):
        yield head[:size]
        return
    yield head
    left = size - len(head)
    offset = sum(head) % 4096
    while left > 0:
        chunk = _FILLER[offset: offset + min(left, len(_FILLER) - offset)]
        yield chunk
        left -= len(chunk)
        offset = 0


def write_files(root: str, files: dict[str, str], size: int, seed: int) -> int:
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    for rel, content in files.items():
        path = os.path.join(root, *rel.split("/"))
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        fd = os.open(path, flags, 0o644)
        try:
            for chunk in content_bytes(content, size, seed):
                os.write(fd, chunk)
        finally:
            os.close(fd)
    return len(files)


def _write_persons(root: str, spec: Spec, persons: list[int], second: bool) -> int:
    return write_files(root, snapshot(spec, persons, second=second), spec.size, spec.seed)


def _person_chunks(spec: Spec, n: int) -> list[list[int]]:
    return [list(range(spec.persons))[k::n] for k in range(n)]


def write_snapshot(root: str | Path, spec: Spec, *, second: bool = False, workers: int = 1) -> int:
    """Write one snapshot; large ones are written by worker processes."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    n = write_files(root, _site_files(second), spec.size, spec.seed)
    if workers <= 1 or spec.persons * spec.files_per_person < 20_000:
        return n + _write_persons(root, spec, list(range(spec.persons)), second)
    from .sources import pool

    with pool(workers) as executor:
        chunks = _person_chunks(spec, workers * 4)
        return n + sum(executor.map(_write_persons, [root] * len(chunks), [spec] * len(chunks), chunks, [second] * len(chunks)))


def make_testdata(out: str | Path, spec: Spec, *, workers: int = 1) -> tuple[int, int]:
    out = Path(out)
    a = write_snapshot(out / "first", spec, second=False, workers=workers)
    b = write_snapshot(out / "second", spec, second=True, workers=workers)
    return a, b


def _sync_persons(root: str, spec: Spec, persons: list[int]) -> int:
    before = snapshot(spec, persons, second=False)
    after = snapshot(spec, persons, second=True)
    return _apply(root, before, after, spec)


def _apply(root: str, before: dict[str, str], after: dict[str, str], spec: Spec) -> int:
    changed = 0
    for rel in before.keys() - after.keys():
        os.unlink(os.path.join(root, *rel.split("/")))
        changed += 1
    rewrite = {rel: c for rel, c in after.items() if before.get(rel) != c}
    return changed + write_files(root, rewrite, spec.size, spec.seed)


def sync_tree(root: str | Path, spec: Spec, *, workers: int = 1) -> int:
    """Turn a tree written as `first` into `second` in place; returns files touched."""
    root = str(root)
    n = _apply(root, _site_files(False), _site_files(True), spec)
    if workers <= 1 or spec.persons * spec.files_per_person < 20_000:
        return n + _sync_persons(root, spec, list(range(spec.persons)))
    from .sources import pool

    with pool(workers) as executor:
        chunks = _person_chunks(spec, workers * 4)
        return n + sum(executor.map(_sync_persons, [root] * len(chunks), [spec] * len(chunks), chunks))
