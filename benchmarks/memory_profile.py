#!/usr/bin/env python3
"""Where a large run's memory goes: peak RSS per phase of a first commit, or of validation's checks.

  commit --rows N       a first commit of N synthetic files (merge_benchmark's waveform paths, no file on
                        disk) into a new manifest, in this process
  run --site S --db M   one `run` of site S into manifest M (a first run if M does not exist), in this process:
                        the scan's steps (listing, planning, hashing), the commit's, the facts saved, validation
  validate --db M       `validate --force` of manifest M's latest version (its files, the facts its cache
                        holds, the checks part by part, the findings stored), in a fresh process that loads
                        nothing else first; --part-files N: N files a part (1000000000: the whole at once)

A thread samples this process's RSS (/proc/self/status) every 5 ms, and another every 50 ms the proportional set size
(Pss) summed over this process and its descendants (the listing and hashing workers: run_benchmarks' tree RSS); each phase is the time inside one of
the functions named below (wrapped from outside: the code under test is not changed), and "after X" the time
from X's return to the next phase. RSS includes what polars' allocator keeps after a free (jemalloc), so a
phase's figure is what the process held then, not what that step allocated. The allocator is set as the command
line sets it (cli.ALLOCATOR_SETTINGS: freed pages given back after 100 ms) unless the user set its decay. Linux only.

    PYTHONPATH=. .venv/bin/python benchmarks/memory_profile.py commit --rows 1000000
    PYTHONPATH=. .venv/bin/python benchmarks/memory_profile.py validate --db /tmp/chorus-bench-x/small100k.sqlite
    PYTHONPATH=. .venv/bin/python benchmarks/memory_profile.py run --site /tmp/chorus-bench-x/small1m --db /tmp/m.sqlite
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chorus_batch.cli import return_freed_memory  # noqa: E402  (light: no polars)

return_freed_memory()  # as the command line runs: before polars is first imported (its allocator reads it then)


class Phases:
    """Peak RSS per phase, in the order the phases began."""

    def __init__(self, first: str = "start") -> None:
        self.current = first
        self.peaks: dict[str, float] = {}
        self.tree_peaks: dict[str, float] = {}
        threading.Thread(target=self._sample, daemon=True).start()
        threading.Thread(target=self._sample_tree, daemon=True).start()

    @staticmethod
    def rss_mib() -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def _sample(self) -> None:
        while True:
            phase = self.current
            self.peaks[phase] = max(self.peaks.get(phase, 0.0), self.rss_mib())
            time.sleep(0.005)

    def _sample_tree(self) -> None:
        import os

        from run_benchmarks import _process_tree_rss_kib

        while True:
            phase = self.current
            kib = _process_tree_rss_kib(os.getpid()) or 0
            self.tree_peaks[phase] = max(self.tree_peaks.get(phase, 0.0), kib / 1024)
            time.sleep(0.05)

    def wrap(self, owner, name: str) -> None:
        function = getattr(owner, name)

        @functools.wraps(function)
        def wrapped(*args, **kwargs):
            self.current = name
            try:
                return function(*args, **kwargs)
            finally:
                self.current = f"after {name}"

        setattr(owner, name, wrapped)

    def report(self) -> None:
        import resource

        time.sleep(0.1)
        print("     RSS  tree Pss  phase (RSS: this process; tree Pss: it and its workers)")
        for phase, peak in self.peaks.items():
            tree = self.tree_peaks.get(phase)
            print(f"{peak:8.0f} {'' if tree is None else f'{tree:8.0f}':>9}  {phase}")
        print(f"{max(self.peaks.values()):8.0f} {max(self.tree_peaks.values(), default=0):9.0f}  peak (MiB)")
        cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        print(f"CPU time (user+sys, this process and its waited-for workers): {cpu:.1f} s")


def profile_commit(rows: int, workdir: Path) -> None:
    import polars as pl
    from merge_benchmark import site_files

    from chorus_batch import commit as commit_module
    from chorus_batch.classify import build_patterns
    from chorus_batch.frames import SCANNED_SCHEMA, empty_errors
    from chorus_batch.scan import WHOLE_SITE, ScanResult
    from chorus_batch.store import Manifest

    phases = Phases()
    for name in ("tally", "compute_diff", "classify", "_by_modality", "described", "verification", "new_state"):
        phases.wrap(commit_module, name)
    for name in ("commit_version", "_assign_records", "save_state"):
        phases.wrap(Manifest, name)
    files = site_files(rows).select(list(SCANNED_SCHEMA)).with_columns(read=pl.lit(True), md5_source=pl.lit("computed"))
    scanned = ScanResult(files=files, errors=empty_errors(), roots=[("/site", None)], scan_started_ns=time.time_ns(),
                         coverage=WHOLE_SITE, based_on=None)
    del files
    manifest = Manifest(workdir / "manifest.sqlite")
    manifest.ensure_schema()
    phases.current = "synthesized"
    started = time.perf_counter()
    committed = commit_module.commit(manifest, scanned, manifest.previous_state(write_cache=True), previous_label=None,
                                     patterns=build_patterns(None), site="/site")
    phases.current = "done"
    print(f"first commit of {rows:,} files: version {committed.label}, {time.perf_counter() - started:.1f} s")
    phases.report()


def profile_run(site: Path, db: Path) -> None:
    from chorus_batch import commit as commit_module
    from chorus_batch import hashing, pipeline, scan
    from chorus_batch.config import RunSettings
    from chorus_batch.store import Manifest, validation
    from chorus_batch.validate import run as validate_run

    phases = Phases()
    for owner, name in ((Manifest, "previous_state"), (scan, "list_roots"), (hashing, "due"), (hashing, "reverify"),
                        (hashing.Hasher, "finish"), (commit_module, "compute_diff"),
                        (commit_module, "classify"), (commit_module, "new_state"), (Manifest, "commit_version"),
                        (Manifest, "save_state"), (validation.ValidationCache, "save_facts"),
                        (validate_run, "validate_version")):
        phases.wrap(owner, name)
    started = time.perf_counter()
    result = pipeline.run(RunSettings(site=str(site), db=str(db)), argv=["memory_profile", "run"])
    phases.current = "done"
    print(f"run of {site}: version {result.label}, {result.n_files:,} files, {result.n_hashed:,} hashed, "
          f"{time.perf_counter() - started:.1f} s")
    phases.report()


def profile_validate(db: Path, part_files: int | None) -> None:
    from chorus_batch.store import validation
    from chorus_batch.validate import checks, kinds
    from chorus_batch.validate import run as validate_run

    if part_files is not None:
        validate_run.PART_FILES = part_files
    phases = Phases()
    for owner, name in ((validation.ValidationCache, "current_files"), (kinds, "facts_needed"),
                        (validation.ValidationCache, "known_keys"), (checks, "_in_part"), (checks, "_across"),
                        (validation.ValidationCache, "save")):
        phases.wrap(owner, name)
    started = time.perf_counter()
    label, findings = validate_run.validate_manifest(str(db), argv=["memory_profile"], force=True)
    phases.current = "done"
    print(f"validate --force of version {label}: {findings.height:,} findings, parts of {validate_run.PART_FILES:,} "
          f"files, {time.perf_counter() - started:.1f} s")
    phases.report()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    commit = sub.add_parser("commit", help="a first commit of synthetic rows")
    commit.add_argument("--rows", type=int, default=1_000_000)
    commit.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    run = sub.add_parser("run", help="one run of a site, in this process")
    run.add_argument("--site", type=Path, required=True)
    run.add_argument("--db", type=Path, required=True)
    validate = sub.add_parser("validate", help="the checks over a manifest's latest version")
    validate.add_argument("--db", type=Path, required=True)
    validate.add_argument("--part-files", type=int, help="files per part of the check (default: the tool's)")
    args = parser.parse_args()
    if args.what == "commit":
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="chorus-memory-") as folder:
            profile_commit(args.rows, Path(folder))
    elif args.what == "run":
        profile_run(args.site, args.db)
    else:
        profile_validate(args.db, args.part_files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
