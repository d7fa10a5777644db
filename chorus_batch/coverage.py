"""Which part of a site a scan covers: buckets of top-level folders, and shards of buckets.

The standard library only: a shard's command line starts walking its folders (walk.py's early
listing) before it loads polars; partitions.py, scan.py and shards.py use these names.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass

BUCKETS = 4096  # the most shards a site can be split into
_SHARED_TOP = ("omop", "metadata")  # with root files: always bucket 0 (and so shard 0)


def top_bucket(top: str) -> int:
    """The bucket of the files under the top-level folder `top`. A name the OS gave that is not UTF-8 (a Latin-1
    `M\xfcller` from a Windows share) is hashed by its bytes, as the OS names it: a UnicodeEncodeError here was an
    internal error in slurm-script and `run --slurm`; a UTF-8 name hashes as it always did."""
    return 0 if top.lower() in _SHARED_TOP else zlib.crc32(top.encode("utf-8", "surrogateescape")) % BUCKETS


@dataclass(frozen=True)
class Coverage:
    """Which part of the site a scan saw: shard `shard` of `shards` (1 shard: the whole site)."""

    shard: int = 0
    shards: int = 1

    @property
    def whole(self) -> bool:
        return self.shards == 1

    def __str__(self) -> str:
        return "the whole site" if self.whole else f"shard {self.shard} of {self.shards}"


WHOLE_SITE = Coverage()


def top_in_shard(top: str, coverage: Coverage) -> bool:
    """Whether the top-level folder `top` belongs to the shard (as scan.shard_of decides for its files)."""
    return top_bucket(top) * coverage.shards // BUCKETS == coverage.shard


def parse_shard(text: str) -> Coverage:
    """'K/N' (K from 0) as a Coverage."""
    # ASCII digits only: re's \d (and int()) take any script's digits, and `--shard ٣/٤` ran as shard 3 of 4 though
    # the rerun commands, folder names and Slurm's own ids are in ASCII (and said as "3/4", not what was given)
    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", str(text), re.ASCII)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"{text!r} is not a shard K/N with 0 <= K < N (e.g. 3/16)")
    if int(match.group(2)) > BUCKETS:  # 1/10**20 was an internal OverflowError in polars once the listing began
        raise ValueError(f"{text!r}: a site is split into at most {BUCKETS} shards (its person folders fall in "
                         f"{BUCKETS} buckets; more shards would list nothing)")
    return Coverage(shard=int(match.group(1)), shards=int(match.group(2)))


def shard_from_environment(env: dict[str, str] | None = None) -> Coverage | None:
    """The shard of a Slurm array task: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT."""
    env = os.environ if env is None else env
    task, count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
    if task is None:
        return None
    if count is None or not count.strip():  # (said as such: "without a shard" sent the user to the variable that was set)
        raise ValueError(f"SLURM_ARRAY_TASK_ID is {task!r} but SLURM_ARRAY_TASK_COUNT is "
                         f"{'not set' if count is None else 'empty'}, so the number of shards is not known")
    first = env.get("SLURM_ARRAY_TASK_MIN", "0")
    if not all(re.fullmatch(r"[0-9]+", value.strip(), re.ASCII) for value in (task, first)):  # (not "٣", "²")
        raise ValueError(f"SLURM_ARRAY_TASK_ID {task!r} (minus SLURM_ARRAY_TASK_MIN {first!r}) is not a task number")
    if count.strip() == "1" and int(task) > 0:
        # `sbatch --array=3 ...` to rerun the fourth shard of a split into four: the array's one task, shard 0 of 1,
        # listed the whole site into a split of its own, and its merge took that split, not the four
        raise ValueError(f"SLURM_ARRAY_TASK_ID is {task}, the only task of its array (SLURM_ARRAY_TASK_COUNT 1: an "
                         f"array of one, as `--array={task}` makes to rerun one shard), so the task id does not say "
                         f"of how many shards; give it: --shard {task}/N (N, the split's shards)")
    try:
        return parse_shard(f"{int(task) - int(first)}/{count}")
    except ValueError as exc:  # said with the variables it came from (an array of 1-4, or with a step, 0-6:2)
        raise ValueError(f"this Slurm array task's SLURM_ARRAY_TASK_ID {task} (minus SLURM_ARRAY_TASK_MIN {first}) "
                         f"of SLURM_ARRAY_TASK_COUNT {count} tasks is no shard: {exc}; the array's task ids must run "
                         "from its first without gaps (--array=0-N-1, no step)") from None
