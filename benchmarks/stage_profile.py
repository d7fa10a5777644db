#!/usr/bin/env python3
"""CPU profiles of a run's commit and validate stages, and of validate alone on a committed manifest.

On a machine shared with other work the wall of a stage says little (issue 15's small100k tree, 2 cores
under a load of 11: the validate stage took 6-14 s of wall for 2.1-2.5 s of CPU); these profiles time
with time.process_time (every thread of the process: polars' too), so their figures can be compared.

  run      one `chorus-batch run` in this process, commit() and validate_version() each profiled:
           OUT.commit.prof, OUT.validate.prof, and their CPU and wall on stderr
  validate validate_version(force=True) of the latest version of a copy of DB, REPS times (the manifest
           is left as it was); with OUT, the last one's profile in OUT.validate.prof

    .venv/bin/python benchmarks/stage_profile.py run OUT -- --site TREE --db NEW.sqlite -q --json
    .venv/bin/python benchmarks/stage_profile.py validate DB [--reps 3] [--out OUT]
    python -m pstats OUT.validate.prof   (sort tottime / cumulative, stats 40)

A tree to profile: benchmarks/run_benchmarks.py's build_tree(root, SMALL100K).
"""

from __future__ import annotations

import argparse
import cProfile
import shutil
import sys
import tempfile
import time
from pathlib import Path


def profiled(module, name: str, out: str | None, tag: str) -> None:
    """`module.name` replaced by a profiled call of itself (CPU and wall said on stderr)."""
    inner = getattr(module, name)

    def call(*args, **kwargs):
        profile = cProfile.Profile(time.process_time)
        cpu, wall = time.process_time(), time.perf_counter()
        profile.enable()
        try:
            return inner(*args, **kwargs)
        finally:
            profile.disable()
            print(f"{tag}: cpu {time.process_time() - cpu:.3f} s, wall {time.perf_counter() - wall:.3f} s",
                  file=sys.stderr)
            if out:
                profile.dump_stats(f"{out}.{tag}.prof")

    setattr(module, name, call)


def profile_run(out: str, argv: list[str]) -> int:
    import chorus_batch.cli as cli
    import chorus_batch.pipeline as pipeline
    import chorus_batch.validate.run as validate_run

    profiled(pipeline, "commit", out, "commit")
    profiled(validate_run, "validate_version", out, "validate")
    sys.argv = ["chorus-batch", "run", *argv]
    return cli.main()  # (not cli.entry: it leaves by os._exit, before the profiles are written)


def profile_validate(db: Path, reps: int, out: str | None) -> int:
    from chorus_batch.store.manifest import Manifest
    from chorus_batch.validate import run as validate_run

    with tempfile.TemporaryDirectory() as scratch:
        for i in range(reps):
            copy = Path(scratch) / db.name
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{db}{suffix}").exists():
                    shutil.copy(f"{db}{suffix}", f"{copy}{suffix}")
            manifest = Manifest(copy)
            label = manifest.latest_version()["label"]
            if i == reps - 1:
                profiled(validate_run, "validate_version", out, "validate")
            cpu, wall = time.process_time(), time.perf_counter()
            findings = validate_run.validate_version(manifest, label, {}, force=True)
            print(f"validate {i + 1}/{reps}: cpu {time.process_time() - cpu:.3f} s, wall "
                  f"{time.perf_counter() - wall:.3f} s, {findings.height} findings", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run")
    run.add_argument("out")
    run.add_argument("args", nargs=argparse.REMAINDER)
    validate = sub.add_parser("validate")
    validate.add_argument("db", type=Path)
    validate.add_argument("--reps", type=int, default=3)
    validate.add_argument("--out")
    args = parser.parse_args()
    if args.what == "run":
        return profile_run(args.out, args.args[1:] if args.args[:1] == ["--"] else args.args)
    return profile_validate(args.db, args.reps, args.out)


if __name__ == "__main__":
    sys.exit(main())
