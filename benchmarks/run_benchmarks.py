#!/usr/bin/env python3
"""Benchmark `chorus-batch run` against baselines timed in the same invocation.

For each synthetic tree, with a warm page cache, the script times

  listing baseline   find ROOT -printf '%s %T@ %p\\n' > /dev/null                  (best of 3)
  hashing baseline   find ROOT -type f -print0 | xargs -0 -P2 -n 256 md5sum > /dev/null
  chorus first       chorus-batch run on a fresh manifest (hashes every file)
  chorus no-change   the same run again, twice (best of 2; hashes nothing), and twice
                     with --no-validate (what the cached validation adds to a no-change run)
  chorus mutated     a run after 5% of the files were modified/renamed/deleted/added
  review             on the resulting two-version manifest, in-process: files as of the first
                     version (whole, one person), diff first -> latest, history of one path,
                     and the HTML report (absolute seconds; the target is < 1 s per query)

and reports chorus as ratios against the baselines. With --compare-src DIR it also times an older
release's source tree (DIR, imported through PYTHONPATH from the same venv): its first and no-change
runs, interleaved with the current release's on the same tree, and reports new/old ratios.
Every chorus run is a subprocess
(`python -m chorus_batch run ... --json -q`) timed by wall clock, start-up and imports
included, as a user experiences it. Absolute seconds depend on the machine; only the
ratios are compared with the targets.

Run `python benchmarks/run_benchmarks.py --help` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import posixpath
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from chorus_batch.testdata import Spec, site_file_count, snapshot, sync_tree, write_snapshot

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "latest.json"
BUILD_WORKERS = 2  # processes writing the trees
MD5_PROCS = 2  # xargs -P for the hashing baseline
SETTLE_S = 3.0  # files must be older than the tool's racy window (2 s) to count as clean
MUTATE_FRACTION = 0.05
BLOCK = 4096
NOCHANGE_REPS = 2  # no-change runs (and as many with --no-validate); the best counts
COMPARE_FIRST_REPS = 2  # --compare-src: first runs per release (fresh manifests), best counts
COMPARE_NOCHANGE_REPS = 3  # --compare-src: no-change runs per release, best counts


# ---------------------------------------------------------------------------- trees


@dataclass(frozen=True)
class TreeDef:
    name: str
    persons: int
    files_per_person: int
    size: int
    md5_reps: int = 2  # repetitions of the md5sum baseline (best is kept)
    seed: int = 0

    def spec(self, change_fraction: float = 0.0) -> Spec:
        # no registries: a row per file of a 1M-file tree would change what the runs measure
        return Spec(self.persons, self.files_per_person, self.size, self.seed, change_fraction, registries=False)

    @property
    def n_files(self) -> int:
        return self.persons * self.files_per_person + site_file_count(self.spec())

    def footprint(self) -> tuple[int, int]:
        """(bytes on disk, inodes) of the tree, estimated from one person's layout, with ~2% for added files."""
        files = snapshot(self.spec(), [0])
        dirs: set[str] = set()
        for rel in files:
            folder = posixpath.dirname(rel)
            while folder and folder not in dirs:
                dirs.add(folder)
                folder = posixpath.dirname(folder)
        n_files, n_dirs = self.n_files, self.persons * len(dirs) + 3
        per_file = max(BLOCK, -(-self.size // BLOCK) * BLOCK)
        return int((n_files * per_file + n_dirs * BLOCK) * 1.02), int((n_files + n_dirs) * 1.02)


SMALL100K = TreeDef("small100k", persons=1000, files_per_person=100, size=4 * KiB)
SMALL1M = TreeDef("small1m", persons=10_000, files_per_person=100, size=64)
MEDIUM = TreeDef("medium", persons=100, files_per_person=100, size=256 * KiB)
LARGE = TreeDef("large", persons=20, files_per_person=1, size=100 * MiB, md5_reps=1)
# issue 15's realistic testdata tree (`testdata --persons 400 --files-per-person 50 --size 65536`): WFDB records,
# DICOM, OMOP; a first run with validation reads ~7,600 headers
REALISTIC = TreeDef("realistic", persons=400, files_per_person=50, size=64 * KiB)
# issue 15's large-file tree: 48 x 64 MiB random files (target: first run <= 1.1x md5sum's wall)
LARGE48 = TreeDef("large48", persons=48, files_per_person=1, size=64 * MiB, md5_reps=1)

SCALES: dict[str, list[TreeDef]] = {
    "smoke": [  # tiny versions of the default trees: checks that the script works, nothing more
        TreeDef("small100k", persons=20, files_per_person=100, size=4 * KiB),
        TreeDef("medium", persons=2, files_per_person=100, size=256 * KiB),
        TreeDef("large", persons=4, files_per_person=1, size=8 * MiB, md5_reps=1),
    ],
    "default": [SMALL100K, MEDIUM, LARGE],
    "full": [SMALL100K, SMALL1M, MEDIUM, LARGE],
    "realistic": [REALISTIC, LARGE48],  # issue 15's trees
}
MANIFEST_BYTES_PER_FILE = 2 * KiB  # generous: the manifest keeps several versions


# ---------------------------------------------------------------------------- results


def peak(values: Iterable[int | None]) -> int | None:
    """The largest of the known values (None if none is known)."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


@dataclass
class ChorusRun:
    wall_s: float
    exit_code: int
    rss_main_kib: int | None  # GNU time %M: the chorus process alone (its worker processes are not counted)
    rss_tree_kib: int | None  # sampled from /proc: sum over the process and all its descendants
    elapsed_s: float  # the tool's own figure (no interpreter start-up)
    files: int
    bytes: int
    files_hashed: int
    bytes_hashed: int
    counts: dict[str, int]
    stage_s: dict[str, float]

    @property
    def peak_rss_kib(self) -> int | None:
        return peak((self.rss_main_kib, self.rss_tree_kib))


@dataclass
class ReleaseRuns:
    """One release's first and no-change runs on a tree (--compare-src); the best of each counts."""
    first: ChorusRun
    first_runs_s: list[float]
    nochange: ChorusRun
    nochange_runs_s: list[float]


def spread(*samples: list[float]) -> float:
    """The largest (max / min - 1) over the sample lists: how much repeats of one command differ."""
    return max((max(s) / min(s) - 1 for s in samples if s), default=0.0)


@dataclass
class Comparison:
    """The current release (new) against an older release's source tree (old), same tree, interleaved runs."""
    src: str
    old: ReleaseRuns
    new: ReleaseRuns
    first_new_vs_old: float = field(init=False)  # < 1: the current release is faster
    nochange_new_vs_old: float = field(init=False)
    first_spread: float = field(init=False)  # noise yardstick: the larger spread of the two releases' repeats
    nochange_spread: float = field(init=False)

    def __post_init__(self) -> None:
        self.first_new_vs_old = self.new.first.wall_s / self.old.first.wall_s
        self.nochange_new_vs_old = self.new.nochange.wall_s / self.old.nochange.wall_s
        self.first_spread = spread(self.old.first_runs_s, self.new.first_runs_s)
        self.nochange_spread = spread(self.old.nochange_runs_s, self.new.nochange_runs_s)


@dataclass
class TreeResult:
    name: str
    files: int
    bytes: int
    build_s: float
    find_s: float
    md5sum_s: float
    first: ChorusRun
    nochange: ChorusRun  # the better of two
    nochange_runs_s: list[float]
    nochange_novalidate: ChorusRun  # the better of two, with --no-validate
    mutate_s: float
    files_touched: int
    mutated: ChorusRun
    review_s: dict[str, float] = field(default_factory=dict)
    comparison: Comparison | None = None  # only with --compare-src
    first_vs_md5sum: float = field(init=False)  # >= 1: as fast as md5sum
    nochange_vs_find: float = field(init=False)  # <= 1: as fast as find
    mutated_vs_find: float = field(init=False)

    def __post_init__(self) -> None:
        self.first_vs_md5sum = self.md5sum_s / self.first.wall_s
        self.nochange_vs_find = self.nochange.wall_s / self.find_s
        self.mutated_vs_find = self.mutated.wall_s / self.find_s

    @property
    def validate_share(self) -> float:
        """The validate stage's share of the no-change run (the tool's own stage timer)."""
        return self.nochange.stage_s.get("validate", 0.0) / self.nochange.wall_s

    @property
    def validate_wall_overhead(self) -> float:
        """(no-change - no-change --no-validate) / no-change --no-validate, wall clock: noisier."""
        return self.nochange.wall_s / self.nochange_novalidate.wall_s - 1

    @property
    def runs(self) -> tuple[ChorusRun, ChorusRun, ChorusRun]:
        return self.first, self.nochange, self.mutated

    @property
    def peak_rss_kib(self) -> int | None:
        return peak(r.peak_rss_kib for r in self.runs)


@dataclass(frozen=True)
class Target:
    label: str
    tree: str
    value: Callable[[TreeResult], float | None]
    op: str  # "<", "<=" or ">="
    limit: float
    unit: str = "x"

    def check(self, results: dict[str, TreeResult]) -> dict[str, Any]:
        result = results.get(self.tree)
        value = self.value(result) if result else None
        if value is None:
            status = "n/a"
        else:
            ok = {"<": value < self.limit, "<=": value <= self.limit, ">=": value >= self.limit}[self.op]
            status = "PASS" if ok else "MISS"
        return {"target": self.label, "tree": self.tree, "value": value, "op": self.op, "limit": self.limit,
                "unit": self.unit, "status": status}


TARGETS = [
    Target("no-change run <= 1.3x find listing on 1M files", "small1m", lambda r: r.nochange_vs_find, "<=", 1.3),
    Target("no-change run < 2 s on 100k files", "small100k", lambda r: r.nochange.wall_s, "<", 2.0, " s"),
    Target("first-run throughput >= 0.9x xargs -P2 md5sum on medium", "medium", lambda r: r.first_vs_md5sum, ">=", 0.9),
    Target("first-run throughput >= 0.9x xargs -P2 md5sum on large", "large", lambda r: r.first_vs_md5sum, ">=", 0.9),
    Target("first-run throughput >= 0.65x xargs -P2 md5sum on 100k", "small100k", lambda r: r.first_vs_md5sum, ">=", 0.65),
    Target("validate adds < 10% to a no-change run on 100k files", "small100k", lambda r: r.validate_share * 100, "<",
           10.0, " %"),
    Target("review queries < 1 s on 1M files (slowest of as-of person, diff, history)", "small1m",
           lambda r: max((v for k, v in r.review_s.items() if k in ("files_person", "diff", "history")), default=None),
           "<", 1.0, " s"),
    # issue 15's first-run targets, as walls (the ratio above is md5sum's wall / the first run's)
    Target("first run <= 1.3x xargs -P2 md5sum's wall on the realistic tree", "realistic",
           lambda r: None if not r.first_vs_md5sum else 1 / r.first_vs_md5sum, "<=", 1.3),
    Target("first run <= 1.1x xargs -P2 md5sum's wall on 48 x 64 MiB", "large48",
           lambda r: None if not r.first_vs_md5sum else 1 / r.first_vs_md5sum, "<=", 1.1),
    Target("peak RSS < 1 GiB on 1M files", "small1m",
           lambda r: None if r.peak_rss_kib is None else r.peak_rss_kib / KiB, "<", 1024.0, " MiB"),
]


class BenchmarkError(Exception):
    pass


# ---------------------------------------------------------------------------- measuring


def timed(cmd: list[str], *, what: str) -> float:
    """Wall seconds of one command, its output discarded; a failure aborts the benchmark."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchmarkError(f"{what} failed with exit code {proc.returncode}: {shlex.join(cmd)}\n{proc.stderr}")
    return wall


def best_of(reps: int, cmd: list[str], *, what: str) -> float:
    timed(cmd, what=what)  # untimed warm-up: page cache, dentries, inodes
    return min(timed(cmd, what=what) for _ in range(reps))


def find_listing_cmd(root: Path) -> list[str]:
    return ["find", str(root), "-printf", r"%s %T@ %p\n"]


def md5sum_cmd(root: Path) -> list[str]:
    script = f'find "$1" -type f -print0 | xargs -0 -P{MD5_PROCS} -n 256 md5sum > /dev/null'
    return ["bash", "-o", "pipefail", "-c", script, "md5sum-baseline", str(root)]


def _process_tree_rss_kib(pid: int) -> int | None:
    """Memory of `pid` and its descendants, from /proc (None where unavailable).

    Proportional set size (Pss, /proc/PID/smaps_rollup): forked workers share the
    parent's pages copy-on-write, and summing plain RSS would count those pages once
    per worker. Pss splits each shared page among its sharers, so the sum is the
    tree's real footprint. Falls back to RSS (statm) where smaps_rollup is missing."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * KiB for line in f if line.startswith("Pss:"))
        except (OSError, IndexError, ValueError, StopIteration):
            try:
                with open(f"/proc/{p}/statm") as f:
                    total += int(f.read().split()[1]) * page
            except (OSError, IndexError, ValueError):
                pass
        todo.extend(children.get(p, ()))
    return total // KiB


class RssSampler(threading.Thread):
    """Polls the summed RSS of a process tree; catches worker processes GNU time does not see."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak_kib: int | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            rss = _process_tree_rss_kib(self.pid)
            if rss is not None:
                self.peak_kib = max(self.peak_kib or 0, rss)
            if self._stop_event.wait(self.interval_s):
                return

    def stop(self) -> int | None:
        self._stop_event.set()
        self.join()
        return self.peak_kib


def run_chorus(root: Path, db: Path, workdir: Path, *, workers: int | None, gnu_time: str | None,
               extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
               what: str = "chorus-batch run") -> ChorusRun:
    """One `chorus-batch run` as a subprocess; exit codes 0 and 1 (findings) are successes.

    `env`: the subprocess environment (default: this process's), e.g. with PYTHONPATH set to an
    older release's source tree; `what` names that release in error messages."""
    cmd = [sys.executable, "-m", "chorus_batch", "run", "--site", str(root), "--db", str(db), "--json", "-q", *extra]
    if workers:
        cmd += ["--workers", str(workers)]
    rss_file = workdir / "rss.txt"
    if gnu_time:
        cmd = [gnu_time, "-o", str(rss_file), "-f", "%M", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = RssSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    rss_tree = sampler.stop()
    if proc.returncode not in (0, 1):
        raise BenchmarkError(f"{what} exited with {proc.returncode}: {shlex.join(cmd)}\n{err}")
    if gnu_time:
        rss_main = int(rss_file.read_text().split()[-1])
    else:  # max over every child so far: an upper bound for this run
        rss_main = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        summary = json.loads(out)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{what} printed no JSON ({exc}):\n{out[:2000]}\n{err}") from exc
    try:
        return ChorusRun(
            wall_s=wall, exit_code=proc.returncode, rss_main_kib=rss_main, rss_tree_kib=rss_tree,
            elapsed_s=summary["elapsed_s"], files=summary["files"], bytes=summary["bytes"],
            files_hashed=summary["files_hashed"], bytes_hashed=summary["bytes_hashed"],
            counts=summary["counts"], stage_s=summary.get("stage_s", {}),
        )
    except KeyError as exc:
        raise BenchmarkError(f"{what}: the JSON summary has no {exc} field: {shlex.join(cmd)}") from exc


def remove_manifest(db: Path) -> None:
    for path in db.parent.glob(db.name + "*"):  # the file, -wal, -shm, .lock, .lock.json
        path.unlink()


def wait_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)


def build_tree(root: Path, tree: TreeDef) -> tuple[int, float]:
    """Write the first snapshot; returns (files written, seconds). Flushed to disk so writeback does not skew timings."""
    t0 = time.perf_counter()
    n = write_snapshot(root, tree.spec(), workers=BUILD_WORKERS)
    os.sync()
    return n, time.perf_counter() - t0


def fastest(runs: list[ChorusRun]) -> ChorusRun:
    return min(runs, key=lambda r: r.wall_s)


def measure_tree(tree: TreeDef, root: Path, n_files: int, build_s: float, written_at: float,
                 workdir: Path, args: argparse.Namespace, gnu_time: str | None) -> TreeResult:
    def chorus(*extra: str, manifest: Path | None = None) -> ChorusRun:
        return run_chorus(root, manifest or db, workdir, workers=args.chorus_workers, gnu_time=gnu_time, extra=extra)

    def old_chorus(manifest: Path) -> ChorusRun:
        """The older release (--compare-src): the same command and options, its package first on PYTHONPATH."""
        return run_chorus(root, manifest, workdir, workers=args.chorus_workers, gnu_time=gnu_time,
                          env=args.compare_env, what=f"chorus-batch run of {args.compare_src}")

    log(f"[{tree.name}] baselines: find listing (best of 3), xargs -P{MD5_PROCS} md5sum (best of {tree.md5_reps}); "
        "each timed again beside the chorus runs")
    find_s = best_of(3, find_listing_cmd(root), what="find listing")
    md5_s = best_of(tree.md5_reps, md5sum_cmd(root), what="md5sum baseline")

    # The machine's speed drifts (on the 2-core VM, the same run took 4.8 s and 2.6 s an hour apart): each
    # baseline is also timed right after the chorus runs it is compared with, and its best time counts.
    def find_again() -> None:
        nonlocal find_s
        find_s = min(find_s, timed(find_listing_cmd(root), what="find listing"))

    def md5sum_again() -> None:
        nonlocal md5_s
        md5_s = min(md5_s, timed(md5sum_cmd(root), what="md5sum baseline"))

    compare = args.compare_src is not None
    db = workdir / f"{tree.name}.sqlite"
    old_db = workdir / f"{tree.name}-old.sqlite"  # --compare-src: the older release's own manifest
    scratch = workdir / f"{tree.name}-scratch.sqlite"  # --compare-src: repeated first runs, a fresh manifest each
    for manifest in (db, old_db, scratch) if compare else (db,):
        remove_manifest(manifest)
    wait_until(written_at + SETTLE_S)  # otherwise the no-change runs rehash "racily clean" files
    old_first_runs: list[ChorusRun] = []
    new_first_runs: list[ChorusRun] = []
    if compare:
        log(f"[{tree.name}] chorus, current and older release ({args.compare_src}) interleaved: first runs "
            f"(best of {COMPARE_FIRST_REPS} each), no-change runs (best of {COMPARE_NOCHANGE_REPS} each)")
        for i in range(COMPARE_FIRST_REPS):
            # Order old, new, new, old, ...: neither release always runs first. The first pair makes the
            # manifests the no-change runs use; later pairs run on a scratch manifest, deleted after each run.
            for release in ("old", "new") if i % 2 == 0 else ("new", "old"):
                if release == "old":
                    old_first_runs.append(old_chorus(old_db if i == 0 else scratch))
                else:
                    new_first_runs.append(chorus(manifest=db if i == 0 else scratch))
                remove_manifest(scratch)
        first = new_first_runs[0]  # the run that made `db`, as without --compare-src
    else:
        log(f"[{tree.name}] chorus: first run, no-change runs")
        first = chorus()
    md5sum_again()
    # Interleaved, so a slow spell of the machine hits both kinds (and both releases) alike.
    nochange_runs: list[ChorusRun] = []
    novalidate_runs: list[ChorusRun] = []
    old_nochange_runs: list[ChorusRun] = []
    for i in range(COMPARE_NOCHANGE_REPS if compare else NOCHANGE_REPS):
        if compare and i % 2 == 0:
            old_nochange_runs.append(old_chorus(old_db))
        nochange_runs.append(chorus())
        find_again()
        if compare and i % 2 == 1:
            old_nochange_runs.append(old_chorus(old_db))
        if i < NOCHANGE_REPS:
            novalidate_runs.append(chorus("--no-validate"))
    nochange = fastest(nochange_runs)
    nochange_novalidate = fastest(novalidate_runs)
    if nochange.files_hashed:
        log(f"[{tree.name}] warning: the no-change run hashed {nochange.files_hashed} files")
    if first.files != n_files:
        log(f"[{tree.name}] warning: chorus listed {first.files} files, the tree has {n_files}")
    comparison = None
    if compare:
        old_nochange = fastest(old_nochange_runs)
        if old_nochange.files_hashed:
            log(f"[{tree.name}] warning: the older release's no-change run hashed {old_nochange.files_hashed} files")
        if old_first_runs[0].files != n_files:
            log(f"[{tree.name}] warning: the older release listed {old_first_runs[0].files} files, "
                f"the tree has {n_files}")
        comparison = Comparison(
            src=str(args.compare_src),
            old=ReleaseRuns(first=fastest(old_first_runs), first_runs_s=[r.wall_s for r in old_first_runs],
                            nochange=old_nochange, nochange_runs_s=[r.wall_s for r in old_nochange_runs]),
            new=ReleaseRuns(first=fastest(new_first_runs), first_runs_s=[r.wall_s for r in new_first_runs],
                            nochange=nochange, nochange_runs_s=[r.wall_s for r in nochange_runs]),
        )
        if not args.keep:
            remove_manifest(old_db)

    log(f"[{tree.name}] mutating {MUTATE_FRACTION:.0%} of the files, then a chorus run")
    t0 = time.perf_counter()
    touched = sync_tree(root, tree.spec(MUTATE_FRACTION), workers=BUILD_WORKERS)
    os.sync()
    mutate_s = time.perf_counter() - t0
    time.sleep(SETTLE_S)
    mutated = chorus()
    find_again()
    log(f"[{tree.name}] review queries on the two-version manifest")
    review_s = time_review(db, workdir)
    if not args.keep:
        remove_manifest(db)
    return TreeResult(
        name=tree.name, files=n_files, bytes=n_files * tree.size, build_s=build_s, find_s=find_s, md5sum_s=md5_s,
        first=first, nochange=nochange, nochange_runs_s=[r.wall_s for r in nochange_runs],
        nochange_novalidate=nochange_novalidate, mutate_s=mutate_s, files_touched=touched, mutated=mutated,
        review_s=review_s, comparison=comparison,
    )


def time_review(db: Path, workdir: Path) -> dict[str, float]:
    """Seconds of the review API's questions (in-process, a fresh reader each, so nothing is cached)."""
    from chorus_batch.report.html import write_report
    from chorus_batch.review import open_manifest

    labels = open_manifest(db).versions()["label"].to_list()
    first, latest = labels[0], labels[-1]
    probe = open_manifest(db).files(first).sort("srcfile")
    person = next(p for p in probe["person_id"].to_list() if p)
    changed = open_manifest(db).diff(first, latest)
    path = changed["srcfile"][0] if changed.height else probe["srcfile"][0]
    questions = {
        "files_all": lambda m: m.files(first),
        "files_person": lambda m: m.files(first, person=person),
        "diff": lambda m: m.diff(first, latest),
        "history": lambda m: m.history(path),
        "report": lambda m: write_report(m, workdir / "report.html"),
    }
    seconds = {}
    for name, ask in questions.items():
        reader = open_manifest(db)
        t0 = time.perf_counter()
        ask(reader)
        seconds[name] = round(time.perf_counter() - t0, 3)
    return seconds


# ---------------------------------------------------------------------------- checks and output


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_tools() -> str | None:
    """Abort if a baseline tool is missing; returns the GNU time path (or None, with a note)."""
    missing = [t for t in ("find", "xargs", "md5sum", "bash") if shutil.which(t) is None]
    if missing:
        raise BenchmarkError(f"missing tools for the baselines: {', '.join(missing)}")
    for candidate in ("/usr/bin/time", shutil.which("time")):
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run([candidate, "-f", "%M", "true"], capture_output=True, text=True)
            if probe.returncode == 0 and probe.stderr.strip().isdigit():
                return candidate
    log("note: GNU time not found (Debian/Ubuntu: apt-get install time); peak RSS of the chorus process "
        "falls back to getrusage(RUSAGE_CHILDREN), an upper bound (max over all children so far)")
    return None


def check_disk(workdir: Path, trees: list[TreeDef], keep: bool, compare: bool = False) -> None:
    footprints = [t.footprint() for t in trees]
    manifests = [t.n_files * MANIFEST_BYTES_PER_FILE for t in trees]
    # --compare-src: a second manifest per tree (the older release's), and a scratch one at a time
    copies = 2 if compare else 1
    need_manifests = (sum(manifests) if keep else max(manifests)) * copies + (max(manifests) if compare else 0)
    need_bytes = sum(b for b, _ in footprints) + need_manifests + 256 * MiB
    need_inodes = sum(i for _, i in footprints)
    free = shutil.disk_usage(workdir).free
    if free < need_bytes:
        raise BenchmarkError(f"not enough disk space in {workdir}: need ~{need_bytes / GiB:.1f} GiB, "
                             f"{free / GiB:.1f} GiB free (choose another --workdir, or fewer trees with --only)")
    st = os.statvfs(workdir)
    if st.f_files and st.f_favail < need_inodes:  # f_files == 0: the file system does not count inodes
        raise BenchmarkError(f"not enough inodes in {workdir}: need ~{need_inodes:,}, {st.f_favail:,} free")
    log(f"disk: need ~{need_bytes / GiB:.2f} GiB and ~{need_inodes:,} inodes; {free / GiB:.1f} GiB free in {workdir}")


def fmt_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def fmt_rss(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / KiB:.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def fmt_runs(samples: list[float]) -> str:
    return " ".join(f"{s:.3f}" for s in samples)


def comparison_report(results: list[TreeResult]) -> list[str]:
    """The --compare-src tables: old and new release per tree, and their stage seconds."""
    compared = [(r, r.comparison) for r in results if r.comparison is not None]
    if not compared:
        return []
    src = compared[0][1].src
    rows, stage_rows = [], []
    for r, c in compared:
        for kind, old, new, old_s, new_s, ratio, spread_ in (
                ("first", c.old.first, c.new.first, c.old.first_runs_s, c.new.first_runs_s, c.first_new_vs_old,
                 c.first_spread),
                ("no-change", c.old.nochange, c.new.nochange, c.old.nochange_runs_s, c.new.nochange_runs_s,
                 c.nochange_new_vs_old, c.nochange_spread)):
            rows.append([f"{r.name} {kind}", f"{old.wall_s:.3f}", f"{new.wall_s:.3f}", f"{ratio:.2f}x",
                         f"{spread_:.0%}", fmt_runs(old_s), fmt_runs(new_s), f"{old.files_hashed:,}",
                         f"{new.files_hashed:,}"])
            stage_rows.append((f"{r.name} {kind} old", old))
            stage_rows.append((f"{r.name} {kind} new", new))
    main = table(["tree / run", "old s", "new s", "new/old", "spread", "old runs s", "new runs s", "old hashed",
                  "new hashed"], rows)
    stage_names = list(dict.fromkeys(k for _, run in stage_rows for k in run.stage_s))
    stages = table(
        ["tree / run / release", "wall s", "in-tool s", *stage_names],
        [[label, f"{run.wall_s:.3f}", f"{run.elapsed_s:.3f}",
          *(f"{run.stage_s[k]:.3f}" if k in run.stage_s else "-" for k in stage_names)] for label, run in stage_rows],
    )
    return [
        "", f"older release ({src}) vs current, interleaved on the same trees (old: PYTHONPATH={src}; "
            f"first: best of {COMPARE_FIRST_REPS} each, no-change: best of {COMPARE_NOCHANGE_REPS} each):", main,
        "new/old < 1: the current release is faster. spread: the larger (slowest / fastest - 1) of the two releases' "
        "own repeats, a rough measure of run-to-run noise: a new/old further from 1 than that is unlikely to be noise "
        "(few repeats: compare the stage seconds too).",
        "", "older release vs current, stage seconds of the best runs (JSON stage_s; '-': stage not in that release):",
        stages,
    ]


def report(results: list[TreeResult], targets: list[dict[str, Any]], scale: str, gnu_time: str | None) -> str:
    main = table(
        ["tree", "files", "bytes", "find s", "md5sum s", "first s", "md5/first", "no-chg s", "no-chg/find",
         "mutated s", "mut/find", "RSS MiB", "tree RSS MiB"],
        [[r.name, f"{r.files:,}", fmt_bytes(r.bytes), f"{r.find_s:.3f}", f"{r.md5sum_s:.3f}", f"{r.first.wall_s:.3f}",
          f"{r.first_vs_md5sum:.2f}x", f"{r.nochange.wall_s:.3f}", f"{r.nochange_vs_find:.2f}x", f"{r.mutated.wall_s:.3f}",
          f"{r.mutated_vs_find:.2f}x", fmt_rss(peak(x.rss_main_kib for x in r.runs)), fmt_rss(peak(x.rss_tree_kib for x in r.runs))]
         for r in results],
    )
    stage_names = list(dict.fromkeys(k for r in results for run in (r.first, r.nochange, r.mutated) for k in run.stage_s))
    stages = table(
        ["tree / run", "wall s", "in-tool s", *stage_names, "hashed files"],
        [[f"{r.name} {kind}", f"{run.wall_s:.3f}", f"{run.elapsed_s:.3f}",
          *(f"{run.stage_s[k]:.3f}" if k in run.stage_s else "-" for k in stage_names), f"{run.files_hashed:,}"]
         for r in results for kind, run in (("first", r.first), ("no-change", r.nochange), ("mutated", r.mutated))],
    )
    mutated = table(
        ["tree", "build s", "mutate s", "touched", *results[0].mutated.counts.keys()] if results else ["tree"],
        [[r.name, f"{r.build_s:.1f}", f"{r.mutate_s:.1f}", f"{r.files_touched:,}", *(f"{v:,}" for v in r.mutated.counts.values())]
         for r in results],
    )
    validation = table(
        ["tree", "no-change s", "--no-validate s", "wall overhead", "validate stage s", "stage share"],
        [[r.name, f"{r.nochange.wall_s:.3f}", f"{r.nochange_novalidate.wall_s:.3f}", f"{r.validate_wall_overhead:+.1%}",
          f"{r.nochange.stage_s.get('validate', 0.0):.3f}", f"{r.validate_share:.1%}"] for r in results],
    )
    review_names = list(dict.fromkeys(k for r in results for k in r.review_s))
    review = table(["tree", *(f"{k} s" for k in review_names)],
                   [[r.name, *(f"{r.review_s[k]:.3f}" if k in r.review_s else "-" for k in review_names)] for r in results])
    target_lines = []
    for t in targets:
        shown = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        note = " (tree not run)" if t["status"] == "n/a" else ""
        target_lines.append(f"  {t['status']:<4}  {t['target']}: {shown}{note}")
    rss_note = ("RSS MiB: peak of the chorus process (GNU time %M; its worker processes are not included). "
                if gnu_time else "RSS MiB: getrusage(RUSAGE_CHILDREN) max over all children so far (upper bound). ")
    notes = [
        "Ratios: md5/first >= 1 means the first chorus run hashes as fast as "
        f"`xargs -P{MD5_PROCS} md5sum`; no-chg/find and mut/find <= 1 mean as fast as the `find` listing.",
        "Times are wall seconds of whole subprocesses (interpreter start-up included), warm page cache; "
        "baselines are best of repeated runs, no-change is the best of "
        f"{len(results[0].nochange_runs_s) if results else NOCHANGE_REPS}.",
        rss_note + "tree RSS MiB: sampled every 0.1 s, the proportional set size (Pss) summed over the process and "
        "its workers (pages the forked workers share with it counted once). The RSS target uses the larger of the two.",
    ]
    out = [main, "", "stage seconds (JSON stage_s; in-tool = elapsed_s, wall - in-tool = start-up and exit):", stages,
           "", f"build and {MUTATE_FRACTION:.0%} mutation (not part of the ratios), and the mutated run's counts:", mutated,
           "", "validation on a no-change run (findings cached per version; stage share = the tool's validate timer / wall):",
           validation,
           "", "review API on the two-version manifest (in-process seconds, fresh reader per question):", review,
           *comparison_report(results), "", *notes, "", "targets:", *target_lines]
    if scale == "smoke":
        out.append("  (smoke scale: the trees are tiny, so PASS/MISS says nothing about performance)")
    return "\n".join(out)


def imported_package(cwd: Path, env: dict[str, str] | None) -> Path:
    """The chorus_batch package folder that `python -m chorus_batch` imports with this cwd and environment."""
    code = "import os, chorus_batch; print(os.path.dirname(os.path.realpath(chorus_batch.__file__)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchmarkError(f"cannot import chorus_batch (PYTHONPATH={(env or os.environ).get('PYTHONPATH', '')!r}):\n"
                             f"{proc.stderr}")
    return Path(proc.stdout.strip())


def compile_bytecode(cwd: Path, env: dict[str, str] | None = None) -> Path:
    """Write the bytecode of the chorus_batch package these runs import, as an install does.

    A source tree run with PYTHONDONTWRITEBYTECODE set (or from a read-only clone) keeps no .pyc: every
    `python -m chorus_batch` then compiles the modules it imports again, 0.18 s of CPU per process measured
    here (0.71 s against 0.53 s for the run's imports), which an installed tool never pays."""
    package = imported_package(cwd, env)
    proc = subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchmarkError(f"cannot write the bytecode of {package}:\n{proc.stdout}{proc.stderr}")
    log(f"bytecode of {package} written (as an install does)")
    return package


def check_compare_src(workdir: Path, src: Path, env: dict[str, str]) -> dict[str, str]:
    """Make sure the old runs import src's package and the new runs do not; returns both folders."""
    old, new = imported_package(workdir, env), imported_package(workdir, None)
    if old != (src / "chorus_batch").resolve():
        raise BenchmarkError(f"--compare-src: with PYTHONPATH={src}, chorus_batch is imported from {old}, "
                             f"not from {src}")
    if new == old:
        raise BenchmarkError(f"--compare-src: the current release also imports chorus_batch from {new} "
                             "(is PYTHONPATH already set to that tree?)")
    log(f"compare: old release imports {old}, current release imports {new}")
    return {"old": str(old), "new": str(new)}


def git_revision(where: Path = BENCH_DIR) -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True).stdout.strip()
        # --no-optional-locks: status must not rewrite the index (someone may be committing meanwhile)
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain"], cwd=where, capture_output=True,
                               text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def write_json(path: Path, results: list[TreeResult], targets: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    def tree_dict(r: TreeResult) -> dict[str, Any]:
        d = dataclasses.asdict(r)
        d["peak_rss_kib"] = r.peak_rss_kib
        if r.comparison is None:  # without --compare-src the JSON is as before
            del d["comparison"]
        return d

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "trees": [tree_dict(r) for r in results], "targets": targets}, indent=2) + "\n")


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time `chorus-batch run` against find and xargs md5sum baselines measured in the same "
                    "invocation on the same synthetic trees, and print the ratios.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python benchmarks/run_benchmarks.py --scale smoke            # quick check that it works (<1 min)\n"
               "  python benchmarks/run_benchmarks.py                          # 100k, medium, large (~5 GB disk)\n"
               "  python benchmarks/run_benchmarks.py --scale full --workdir /scratch  # adds 1M files (~10 GB)\n"
               "  python benchmarks/run_benchmarks.py --only medium,large --out /tmp/bench.json\n"
               "  python benchmarks/run_benchmarks.py --compare-src /work/wt-base   # also time an older release\n"
               "\ntrees (default/full scale):\n"
               + "".join(f"  {t.name:<10} {t.n_files:>9,} files of {fmt_bytes(t.size) if t.size >= MiB else f'{t.size:,} B'}\n"
                         for t in SCALES["full"]),
    )
    parser.add_argument("--scale", choices=list(SCALES), default="default",
                        help="smoke: tiny trees; default: small100k, medium, large; full: adds small1m (default: %(default)s)")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these trees of the scale")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="parent folder for the trees and manifests; a fresh chorus-bench-* folder is made inside "
                             "it (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the trees and manifests (default: delete them at the end)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file for all figures (default: %(default)s)")
    parser.add_argument("--chorus-workers", type=int, metavar="N",
                        help="pass --workers N to chorus-batch run (default: the tool's default, the CPU count)")
    parser.add_argument("--compare-src", type=Path, metavar="DIR",
                        help="an older release's source tree (a checkout holding chorus_batch/): also time its first "
                             "and no-change runs on every tree, interleaved with the current release's, running "
                             "`python -m chorus_batch` from this venv with PYTHONPATH=DIR, and print new/old ratios")
    args = parser.parse_args(argv)
    if args.compare_src is not None:
        args.compare_src = args.compare_src.resolve()
        if not (args.compare_src / "chorus_batch" / "__main__.py").is_file():
            parser.error(f"--compare-src: {args.compare_src} has no chorus_batch/__main__.py")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(args.compare_src), env.get("PYTHONPATH")) if p)
        args.compare_env = env
    else:
        args.compare_env = None
    names = [t.name for t in SCALES[args.scale]]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"--only: {', '.join(unknown)} not in scale {args.scale!r} (choose from {', '.join(names)})")
        args.trees = [t for t in SCALES[args.scale] if t.name in wanted]
    else:
        args.trees = SCALES[args.scale]
    if args.chorus_workers is not None and args.chorus_workers < 1:
        parser.error("--chorus-workers must be at least 1")
    return args


def remove_workdir(workdir: Path) -> float:
    """Delete the run's folder (trees, manifests), saying so first and how long it took; returns the seconds.

    Said because it can take a while after the summary: unlinking is bound by the disk, not the CPU (`rm -rf` is
    no faster), and on a busy shared disk the smoke trees alone took 7-11 s, a million-file tree minutes."""
    log(f"removing {workdir} (--keep skips this) ...")
    t0 = time.perf_counter()
    try:
        shutil.rmtree(workdir, ignore_errors=True)
    except KeyboardInterrupt:  # the results are written by now: say what is left, no traceback
        log(f"run_benchmarks: interrupted while removing {workdir}: delete the rest with rm -rf {shlex.quote(str(workdir))}")
        return time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    left = " (some of it could not be removed)" if workdir.exists() else ""
    log(f"removed {workdir} in {seconds:.1f} s{left}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    try:
        gnu_time = check_tools()
        args.workdir.mkdir(parents=True, exist_ok=True)
        check_disk(args.workdir, args.trees, args.keep, compare=args.compare_src is not None)
    except BenchmarkError as exc:
        log(f"run_benchmarks: error: {exc}")
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="chorus-bench-", dir=args.workdir))
    log(f"workdir: {workdir}")
    results: list[TreeResult] = []
    compare_packages = None
    try:
        if args.compare_src is not None:
            compare_packages = check_compare_src(workdir, args.compare_src, args.compare_env)
            compile_bytecode(workdir, args.compare_env)
        compile_bytecode(workdir)
        built: dict[str, tuple[int, float, float]] = {}
        for tree in args.trees:
            log(f"[{tree.name}] building {tree.n_files:,} files of {tree.size:,} B ...")
            n, build_s = build_tree(workdir / tree.name, tree)
            built[tree.name] = (n, build_s, time.time())
            log(f"[{tree.name}] built in {build_s:.1f} s")
        for tree in args.trees:
            n, build_s, written_at = built[tree.name]
            results.append(measure_tree(tree, workdir / tree.name, n, build_s, written_at, workdir, args, gnu_time))
        # Report and write the JSON before the clean-up: deleting the trees takes minutes for a million files,
        # and on a busy disk even the smoke trees' 0.2 GB took 7-11 s here (unlink waits on the journal).
        by_name = {r.name: r for r in results}
        targets = [t.check(by_name) for t in TARGETS]
        print(report(results, targets, args.scale, gnu_time), flush=True)
        meta = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),  # the clean-up excluded
            "scale": args.scale,
            "trees": [dataclasses.asdict(t) for t in args.trees],
            "argv": sys.argv,
            "python": sys.version,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "git_revision": git_revision(),
            "chorus_workers": args.chorus_workers,
            "baselines": {"find": shlex.join(find_listing_cmd(Path("ROOT"))), "md5sum": shlex.join(md5sum_cmd(Path("ROOT")))},
            "rss_main": "GNU time %M (chorus process only)" if gnu_time else "getrusage RUSAGE_CHILDREN (upper bound)",
            "rss_tree": "sampled /proc sum over the process tree every 0.1 s",
        }
        if args.compare_src is not None:
            meta["compare"] = {
                "src": str(args.compare_src),
                "src_git_revision": git_revision(args.compare_src),
                "packages": compare_packages,
                "old_env": f"PYTHONPATH={args.compare_env['PYTHONPATH']}",
                "first_reps": COMPARE_FIRST_REPS,
                "nochange_reps": COMPARE_NOCHANGE_REPS,
                "order": "per tree: first runs old, new, new, old (later ones on a scratch manifest); "
                         "no-change runs old, new, new, old, old, new (the current release's --no-validate runs between)",
            }
        write_json(args.out, results, targets, meta)
        log(f"wrote {args.out}")
    except BenchmarkError as exc:
        log(f"run_benchmarks: error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("run_benchmarks: interrupted")
        return 130
    finally:
        if args.keep:
            log(f"kept the trees and manifests in {workdir}")
        else:
            remove_workdir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
