"""A site too big for one node: a Slurm job array hashes shards, one merge job commits.

`slurm_script(...)` writes a bash script a site submits as is (`sbatch nightly.sbatch`, or
`bash nightly.sbatch` on a login node). Submitted, it makes a fresh staging folder (owner-only) and
submits two jobs with `sbatch --parsable`:

1. a job array `--array=0-(N-1)`: task K runs
   `python -m chorus_batch run --site S --db M --shard K/N --staging DIR`, which lists and hashes
   shard K of N into `DIR/shard-K-of-N/` and never writes the manifest; one log per task,
   `LOGS/chorus-shard-<array job>_<K>.out`;
2. a merge job, `--dependency=afterok:<array job>` (`--kill-on-invalid-dep=yes`: a failed shard
   cancels it rather than leaving it pending for ever): `run --site S --db M --merge DIR` checks
   the shards, commits, validates and reports as a plain run; it writes its exit code to
   `DIR/merge.exit` (the cluster may have no accounting database, so no `sacct`).

The jobs run the interpreter that generated the script (its absolute path), with the
environment of the submitting shell (`--export=ALL`), in the staging folder.

One submission per manifest at a time: the script first takes `<db>.slurm.lock` (the lock `run --slurm` holds while
it submits and follows) and refuses (exit 4) while jobs of another submission for the manifest, named by their
--comment, are queued or running (_guard_lines); it clears an earlier submission's completion records in a --staging
folder under that folder's lock (shards.staging_lock), alone, and refuses (exit 4) while they are shards of another
manifest that it has not merged yet (shards.submission_may_clear).

`submit_and_follow(script)` runs such a script with bash, follows the jobs with `squeue`, and
returns the merge's exit code; Ctrl-C (SIGTERM, SIGHUP) cancels the jobs it submitted and says whether the merge
had started; a reader of its output that left (`| head`) does not stop the following.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ChorusError, ExitCode, Stopped, UsageError
from .faults import pause
from .units import plural
from .whole_script import whole_script_lines

DEFAULT_SHARDS = 8
DEFAULT_CPUS = 4
MAX_WORKERS = 256  # the most `run --workers` (and [run] workers) takes
SHARD_JOB = "chorus-shard"
MERGE_JOB = "chorus-merge"
SUBMIT_JOB = "chorus-submit"
MERGE_EXIT = "merge.exit"
MISSING_SLURM_FIX = "run on a login node of the cluster or install slurm-wlm"
BAD_SLURM_CONF = "Slurm's commands cannot read the cluster's configuration; nothing was submitted and nothing was committed"
BAD_SLURM_CONF_FIX = "point SLURM_CONF at this cluster's slurm.conf, or unset it (Slurm then finds its own)"
END_LINE = "# end of the chorus-batch Slurm script"  # its last line: a script without it was cut short, and runs nothing
# What the script says when sbatch refuses a job (submit() recognises them: exit 2 with sbatch's own message)
REFUSED_ARRAY = "chorus-batch: sbatch refused the shards' job array"
# What sbatch says when this machine has no cluster to submit to: no slurm.conf (nor a DNS SRV record naming the
# controller), a configuration it cannot read, a controller it cannot resolve or reach.
# (a controller slurm.conf names that no address is found for: the script's first squeue says it, REFUSED_NO_CLUSTER)
UNRESOLVED_CONTROLLER = "unable to establish control machine address"
NO_CLUSTER = ("could not establish a configuration source", "unable to process configuration file",
              UNRESOLVED_CONTROLLER, "unable to contact slurm controller")
REFUSED_MERGE = "chorus-batch: sbatch refused the merge job"
# What the script says when its first Slurm command (squeue) finds no address for the controller slurm.conf names
REFUSED_NO_CLUSTER = "chorus-batch: no Slurm cluster"
# What the script says when another submission for the manifest (or a merge or shard in the staging folder) is under
# way: submit() makes it exit 4, as the lock it names
REFUSED_BUSY = "chorus-batch: not submitted"
LOCKED_ENV = "CHORUS_BATCH_SLURM_LOCKED"  # run --slurm holds <db>.slurm.lock for the script it runs: its path
JOB_COMMENT = "chorus-batch manifest "  # each job's --comment: this, then the manifest's path (squeue %k)
REFUSED_VSIZE = "chorus-batch: --mem is too little on this cluster"
REFUSED_UNWRITABLE = "chorus-batch: the staging folder cannot be written"
STAGING_SAID = "staging folder: "  # (last on the script's line for a refused merge job: the folder that stays)

# (checked with fullmatch: `$` also matches before a final line break, and `--mem $'16G\n'` passed to be an internal
# error in mem_mib, a `--partition` with one to be refused by sbatch at submission)
_MEM = re.compile(r"^[0-9]+[KMGT]?$", re.IGNORECASE)
_TIME = re.compile(r"^(?:[0-9]+-)?[0-9]+(?::[0-9]+){0,2}$|^(?:UNLIMITED|INFINITE)$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+(?:,[A-Za-z0-9_.+-]+)*$")


def check_mem(text: str) -> str:
    """Slurm's --mem: a whole number with an optional K, M, G or T (e.g. 16G)."""
    if not _MEM.fullmatch(text):
        raise ValueError(f"{text!r} is not a Slurm memory size (e.g. 16G, 500M)")
    # Slurm holds a job's memory as MiB in 63 bits (the 64th marks --mem-per-cpu) and multiplies G and T into it
    # unchecked: --mem=18014398509481984G wrapped to another size that sbatch took and the job then never started,
    # and the script's VSizeFactor check said such a --mem was "too little" (its MiB overflowed bash's arithmetic)
    if int(text.rstrip("KMGTkmgt")) >= 1 << 63 or mem_mib(text) >= 1 << 63:
        raise ValueError(f"{text!r} is more memory than Slurm can be asked for (at most {(1 << 63) - 1}M; "
                         "a node's memory, as `sinfo -o '%n %m'` says, is the most a job gets)")
    return text


def mem_mib(text: str) -> int:
    """A checked --mem (check_mem) in MiB, rounded up (sbatch's default unit is M); 0 is "all of a node's memory"."""
    number, unit = int(text.rstrip("KMGTkmgt")), (text[-1:].upper() if not text[-1:].isdigit() else "M")
    return {"K": -(-number // 1024), "M": number, "G": number << 10, "T": number << 20}[unit]


def check_time(text: str) -> str:
    """Slurm's --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED."""
    if not _TIME.fullmatch(text):
        raise ValueError(f"{text!r} is not a Slurm time limit (e.g. 90, 02:00:00, 1-12:00:00)")
    # In range: 25:99:99 passed the form and was left to sbatch, which refused it at submission (or, from a
    # printed script, tonight); the first field is open (minutes, or hours of HH:MM:SS), a day's hours below 24
    days, _dash, clock = text.rpartition("-")
    fields = [int(f) for f in clock.split(":")] if clock.replace(":", "").isdigit() else []
    limits = ([24, 60, 60] if days else [None, 60, 60])[:len(fields)]
    for value, limit in zip(fields, limits):
        if limit is not None and value >= limit:
            raise ValueError(f"{text!r} is not a Slurm time limit: {value} is out of range (minutes and seconds "
                             "below 60, a day's hours below 24; e.g. 90, 02:00:00, 1-12:00:00)")
    return text


SUBMIT_TIME_S = 600  # the submitting job's own limit (it upgrades the manifest, then calls sbatch twice)


def time_seconds(text: str) -> int | None:
    """A Slurm time limit (check_time's forms) in seconds; None for no limit (0, UNLIMITED, INFINITE)."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, dash, clock = text.rpartition("-")
    fields = [int(f) for f in clock.split(":")]
    if dash:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = int(days) * 86400 + sum(value * unit for value, unit in zip(fields, (3600, 60, 1)))
    else:  # MM, MM:SS, HH:MM:SS
        seconds = sum(value * unit for value, unit in zip(fields, {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(fields)]))
    return seconds or None


def submit_time(time: str | None) -> str:
    """The submitting job's --time: 10 minutes, or the jobs' own --time when shorter. A partition whose MaxTime is
    below 10 minutes (the user's --time fits it) kept `sbatch nightly.sbatch` pending for ever (PartitionTimeLimit)."""
    seconds = time_seconds(time) if time else None
    if seconds is not None and seconds < SUBMIT_TIME_S:
        return time
    return f"{SUBMIT_TIME_S // 3600:02d}:{SUBMIT_TIME_S // 60 % 60:02d}:{SUBMIT_TIME_S % 60:02d}"


def check_name(text: str) -> str:
    """A partition or account name (letters, digits, _.+- ; partitions may be a comma list)."""
    if not _NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a Slurm partition or account name")
    return text


def _is_url(path: str) -> bool:
    return "://" in path


def _absolute(path: str | os.PathLike) -> str:
    text = os.fspath(path)
    from .urls import expand_home

    # (os.path.expanduser leaves '~' where there is no home: abspath then made it a folder '~' here)
    return text if _is_url(text) else os.path.abspath(expand_home(text, f"the path {text}"))


def _one_name(db: str) -> str:
    """The manifest as its submission lock and its jobs' --comment name it: its real path (symbolic links resolved),
    as the manifest's own lock is named, so that a `run --slurm` through a linked --db and one through the real path
    exclude each other (each had its own <db>.slurm.lock, and neither found the other's jobs)."""
    return db if _is_url(db) else os.path.realpath(db)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _require_folder(folder: str | None, what: str) -> None:
    """A UsageError if `folder` (absolute) is a file or lies under one; a folder, or none yet, passes."""
    if not folder:
        return
    for path in (Path(folder), *Path(folder).parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise UsageError(f"{what} {folder} cannot be made: {path} is a file, not a folder; no script was made "
                                 "and nothing was submitted", where=what,
                                 fix="give --staging a folder (or the path of a new one) on a file system every node "
                                     "of the cluster reaches")
            return


def _q(words) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def _guard_lines(db: str) -> str:
    """The script's first step: one submission per manifest at a time. A plain `sbatch nightly.sbatch` took no lock and
    looked at nothing: beside a `run --slurm` following its jobs, beside last night's jobs still queued (or jobs a
    `run --slurm` could not cancel, the controller down), or beside itself submitted twice at once, it hashed the whole
    site again, and only the merge told, after the night's work, that its shards were stale or incomplete. It takes
    `<db>.slurm.lock` (the lock `run --slurm` holds; not when that `run --slurm` runs it, LOCKED_ENV) while it submits,
    and refuses (exit 4) when another holds it, or when jobs of another submission for the manifest (their --comment,
    JOB_COMMENT) are still queued or running: naming them, with their scancel. squeue failing (the controller down)
    is left to sbatch, which then fails too; squeue finding no address for the controller (REFUSED_NO_CLUSTER) is said at once.
    It ends before any other step: nothing was submitted or changed."""
    lock = shlex.quote(_one_name(db) + ".slurm.lock")
    want = shlex.quote(JOB_COMMENT + _one_name(db))
    return f"""# One submission per manifest at a time: `run --slurm` holds its lock while it submits and follows; this script
# holds it while it submits, and is refused while another submission's jobs for this manifest are queued or running
db={shlex.quote(db)}
slurm_lock={lock}
locked=""
if [ "${{{LOCKED_ENV}:-}}" != "$slurm_lock" ] && command -v flock >/dev/null 2>&1; then
    while :; do
        ( umask 077; : >> "$slurm_lock" ) 2>/dev/null || break  # (a folder it cannot write: the merge says so)
        exec 9>> "$slurm_lock"
        if ! flock -n -x 9; then
            # (who, as run --slurm names a holder: its record's pid, host, user and start; not its other fields)
            holder=$(sed -n 's/.*"pid": *\\([0-9][0-9]*\\).*"host": *"\\([^"]*\\)".*"user": *"\\([^"]*\\)".*"started_at": *"\\([^"]*\\)".*/pid \\1 on host \\2 (user \\3), started \\4/p' "$slurm_lock.json" 2>/dev/null | head -n 1 || true)
            echo "{REFUSED_BUSY}: another submission for the manifest $db is being made or followed (a \\`chorus-batch run --slurm\\`, or this script submitted at the same time: ${{holder:-it has not said who yet}}; its lock is $slurm_lock): a second one would hash the whole site again and its merge would be refused; nothing was submitted; wait for it to end, then submit again if the site changed since" >&2
            exit 4
        fi
        if [ "$slurm_lock" -ef "/proc/$$/fd/9" ]; then locked=1; break; fi
        exec 9>&-  # (its last holder removed it meanwhile: a lock on that file guards nothing)
    done
    if [ -n "$locked" ]; then
        rm -f -- "$slurm_lock.json"
        ( set -o noclobber; printf '{{"pid": %d, "host": "%s", "user": "%s", "started_at": "%s"}}\\n' \\
            "$$" "$(hostname)" "$(id -un)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$slurm_lock.json" ) 2>/dev/null || true
        # (let go when this script ends: the records go with it, while it still holds the lock)
        trap 'rm -f -- "$slurm_lock.json" "$slurm_lock"' EXIT
    fi
fi
unset {LOCKED_ENV}  # (run --slurm's word to this script alone: not passed on to the jobs sbatch starts)
others=""
ids=""
# A squeue that finds no address for the controller its slurm.conf names: sbatch, reading the same, failed the same
# after as long again (Slurm's clients retry resolving it for 10 s), and was then said; said now. Any other failure (no
# slurm.conf, said at once; a controller down or slow) is left to sbatch, as before.
listed=$(unset "${{!SQUEUE_@}}"; timeout 30 squeue --noheader -u "$(id -un)" --name={SHARD_JOB},{MERGE_JOB} --format='%i|%j|%T|%F|%k' 2>&1) || {{
    case "$(printf '%s' "$listed" | tr 'A-Z' 'a-z')" in
        *"{UNRESOLVED_CONTROLLER}"*)
            printf '%s\n' "$listed" >&2
            echo "{REFUSED_NO_CLUSTER}: squeue (above) reaches no Slurm cluster from this machine, nor would sbatch; nothing was submitted" >&2
            exit 2 ;;
    esac
    listed=""
}}
# (one squeue: each job, and the job of its array, %F, that scancel takes; the comment last, as it may hold a '|'; without
# the user's SQUEUE_* variables, which filter its answer whatever its options say: SQUEUE_PARTITION hid the jobs)
while IFS='|' read -r job_id job_name job_state job_base job_comment; do
    if [ "$job_comment" = {want} ]; then
        others="$others${{others:+, }}$job_name $job_id ($(printf '%s' "$job_state" | tr 'A-Z' 'a-z'))"
        ids="$ids$job_base
"
    fi
done <<< "$listed"
if [ -n "$others" ]; then
    ids=$(printf '%s' "$ids" | sort -u | tr '\\n' ' ')
    echo "{REFUSED_BUSY}: jobs of another submission for the manifest $db are still queued or running: $others; a second submission would hash the whole site again and its merge would be refused; nothing was submitted; let them finish (squeue -u $(id -un)), or cancel them with \\`scancel ${{ids% }}\\`, then submit again" >&2
    exit 4
fi
"""


def slurm_script(*, site: str | None, db: str, shards: int = DEFAULT_SHARDS, staging: str | None = None,
                 cpus_per_task: int = DEFAULT_CPUS, mem: str | None = None, time: str | None = None,
                 partition: str | None = None, account: str | None = None, config: str | None = None,
                 python: str = sys.executable, log_dir: str | None = None) -> str:
    """The bash script that submits the shard array and the merge job (see the module docstring).

    `staging` None: a new folder `<db>.staging/<UTC time>` each submission (a local manifest only).
    `log_dir` None: `<staging>/logs`. Paths are made absolute; `site` None leaves the site to the
    config file. Raises UsageError for values Slurm would not take.
    """
    if shards < 1 or cpus_per_task < 1:
        raise UsageError("--shards and --cpus-per-task must be at least 1", where="slurm-script arguments",
                         fix="pass whole numbers of 1 or more")
    from .coverage import BUCKETS

    if shards > BUCKETS:  # every shard task would refuse its K/N (coverage.parse_shard): said before any is queued
        raise UsageError(f"--shards {shards}: a site is split into at most {BUCKETS} shards (its person folders fall "
                         f"in {BUCKETS} buckets; more shards would list nothing); no script was made and nothing was "
                         "submitted", where="--shards", fix=f"give --shards {BUCKETS} or fewer")
    try:
        for value, check in ((mem, check_mem), (time, check_time), (partition, check_name), (account, check_name)):
            if value is not None:
                check(value)
    except ValueError as exc:
        raise UsageError(str(exc), where="--mem / --time / --partition / --account",
                         fix="use Slurm's own notation, as for sbatch") from None
    for value, what in ((site, "--site"), (db, "--db"), (staging, "--staging"), (config, "--config"), (python, "python"),
                        (log_dir, "the log folder")):
        if value and _CONTROL.search(value):  # a line break would end a comment or a here-document: a command
            raise UsageError(f"{what} holds a control character (a line break, a tab, ...) that a batch script cannot "
                             f"carry safely: {value!r}", where=what,
                             fix="rename the folder (or file) without control characters, or give another path to it")
    if not python or not os.path.isabs(python):
        raise UsageError(f"the interpreter {python!r} is not an absolute path", where="python",
                         fix="generate the script with the interpreter the jobs are to run")
    if staging:
        from .urls import staging_folder

        staging = staging_folder(staging, "--staging")
    if _is_url(db):  # every shard refuses it (pipeline.scan_shard): said now, not in each array task tonight
        from .urls import mask_url

        raise UsageError(f"--db {mask_url(db)}: the shards of a Slurm run read the manifest where they run, so it must "
                         "be a file on a file system every node of the cluster reaches, not a manifest in the cloud; "
                         "no script was made and nothing was submitted", where="--db / [manifest] db",
                         fix="keep the manifest on the cluster's shared file system for Slurm runs (e.g. --db "
                             "/shared/chorus/manifest.sqlite), or run `chorus-batch run` without Slurm on one node")
    db = _absolute(db)
    site = _absolute(site) if site else None
    config = _absolute(config) if config else None
    # A staging (or log) folder that is a file, or lies under one: the script's mkdir failed when it was submitted
    # (exit 3, "submitting the Slurm jobs failed"); refused now, as a --db that is a folder is
    for folder, what in ((_absolute(staging) if staging else db + ".staging", "--staging" if staging else
                          "the staging folder (<db>.staging, the default)"),
                         (_absolute(log_dir) if log_dir else None, "the log folder")):
        _require_folder(folder, what)
        if folder and "\\" in folder:
            # The jobs' logs are named by sbatch's --output pattern in this folder; a backslash anywhere in a pattern
            # turns its replacements (%A, %a, %j) off and is dropped: every task failed at once without a log (slurm
            # 22.05), the merge never ran, and the follower named logs that were never written.
            raise UsageError(f"{what} {folder} holds a backslash, which sbatch reads in the jobs' log names (--output) "
                             "as \"replace nothing\": every task would fail without a log; no script was made and "
                             "nothing was submitted", where=what,
                             fix="give --staging a folder whose path has no backslash (rename it, or another one)")

    run = [python, "-m", "chorus_batch", "run"]
    if config:
        run += ["--config", config]
    if site:
        run += ["--site", site]
    # each job's --workers: its CPUs, up to what `run --workers` takes (a 512-CPU task's every shard was refused)
    run += ["--db", db, "--workers", str(min(cpus_per_task, MAX_WORKERS))]
    shard_cmd = _q(run) + f' --shard "$SLURM_ARRAY_TASK_ID/{shards}" --staging "$CHORUS_STAGING"'
    merge_cmd = _q(run) + ' --merge "$CHORUS_STAGING"'
    # A node without the interpreter (a venv on a login node's local disk): bash's "line 3: ...: No such file or
    # directory" was all the job's log said. Each job checks it first and says what to do (exit 2: nothing was done).
    no_python = ("printf 'chorus-batch: the interpreter %s is not on %s, the node this Slurm job ran on: the jobs run "
                 "the interpreter that made the script, so it must be at the same path on every node; install "
                 "chorus-batch on a file system every node reaches (or at that path on each node), make the script "
                 "with that interpreter, and submit it again; nothing was done here\\n' "
                 f'{shlex.quote(python)} "$(hostname)" >&2')
    has_python = f"[ -x {shlex.quote(python)} ]"

    limits = [f"--cpus-per-task={cpus_per_task}"]
    limits += [f"--mem={mem}"] if mem else []
    limits += [f"--time={time}"] if time else []
    placement = [f"--partition={partition}"] if partition else []
    placement += [f"--account={account}"] if account else []
    sbatch = ["sbatch", "--parsable", "--export=ALL", "--nodes=1", "--ntasks=1", *limits, *placement]
    # (each job names its manifest, so that a later submission for it finds them in squeue: see `guard` below)
    comment = f"--comment={shlex.quote(JOB_COMMENT + _one_name(db))}"

    # The default staging folder, one per submission, held every night's shard lists (each file's path, person ids in
    # them) beside the manifest for ever. Once the merge committed (exit 0, or 1: findings), its shards are of no more
    # use (a rerun of that merge says "merged already"): they go; the logs and merge.exit stay. A --staging too: its
    # merged shards were kept for ever, undocumented, and the next submission rewrites them all anyway (the folder, its
    # logs, other splits and whatever else the site keeps there stay).
    tidy = f'if [ "$code" -le 1 ]; then rm -rf -- "$CHORUS_STAGING"/shard-*-of-{shards}; fi\n'
    if staging is None:
        staging_line = f'staging={shlex.quote(db + ".staging")}/"$(date -u +%Y%m%dT%H%M%SZ)"'
        make_staging = 'mkdir -p -- "$(dirname -- "$staging")"\nmkdir -- "$staging" 2>/dev/null || { staging="$staging-$$"; mkdir -- "$staging"; }   # new each submission'
        # this submission's, left empty: gone, and the folder of submissions made for it when it holds no other
        discard = ('{ rmdir -- "$staging/logs"; rmdir -- "$staging" && rmdir -- "$(dirname -- "$staging")"; } '
                   '2>/dev/null || true; ')
    else:
        staging_line = f"staging={shlex.quote(_absolute(staging))}"
        make_staging = 'mkdir -p -- "$staging"'
        discard = ""  # the user's folder: kept
    logs_line = f"logs={shlex.quote(_absolute(log_dir))}" if log_dir else 'logs="$staging/logs"'
    header = [f"#SBATCH --job-name={SUBMIT_JOB}", "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=1",
              f"#SBATCH --time={submit_time(time)}", *(f"#SBATCH {p}" for p in placement)]
    shown = _q(run)
    from . import __version__
    from .processes import ADDRESS_SPACE_NEEDED

    # A cluster with VSizeFactor makes a job's memory times that percentage its address-space limit (`ulimit -v`, soft
    # and hard): under what a run maps, every shard and the merge exited 2 in the night. Checked before anything is
    # queued (a controller that does not answer within 15 s: left to sbatch).
    needed = ADDRESS_SPACE_NEEDED >> 20
    vsize_check = "" if not mem or not mem_mib(mem) else f"""# VSizeFactor: --mem={mem} times it is each job's address-space limit, and a run maps about {needed} MiB
vsize=$(timeout 15 scontrol show config 2>/dev/null | sed -n 's/^VSizeFactor *= *\\([0-9][0-9]*\\).*/\\1/p' || true)
if [ -n "$vsize" ] && [ "$vsize" -gt 0 ] && [ {mem_mib(mem)} -lt $(( ({needed} * 100 + vsize - 1) / vsize )) ]; then
    echo "{REFUSED_VSIZE}: its VSizeFactor=$vsize makes the jobs' address-space limit (ulimit -v) $(( {mem_mib(mem)} * vsize / 100 )) MiB, --mem={mem} times $vsize%, and a run maps about {needed} MiB (most of it reserved, never used), so every shard and the merge would stop at once; give --mem=$(( ({needed} * 100 + vsize - 1) / vsize ))M or more; nothing was submitted" >&2
    exit 2
fi
"""

    guard = _guard_lines(db)
    from .shards import STAGING_LOCK
    # (the shards queued and no merge, by a script cut short while it was written: whole_script)
    whole = "\n".join(whole_script_lines(
        END_LINE, what="this script", cut_effect="queues the shards and no merge", nothing="nothing was submitted",
        save="save it to a file and submit that: chorus-batch slurm-script ... > nightly.sbatch && sbatch nightly.sbatch",
        again="chorus-batch slurm-script", prefix="chorus-batch: "))
    return f"""#!/bin/bash
{chr(10).join(header)}
#
# chorus-batch on a Slurm cluster (generated by chorus-batch {__version__}, `chorus-batch slurm-script`).
# Submit as is: `sbatch THIS_FILE` (this small job submits the others), or `bash THIS_FILE` on a login node.
# It submits
#   1. a job array of {shards} tasks ({SHARD_JOB}): task K lists and hashes shard K of {shards} of the site into
#      STAGING/shard-K-of-{shards}/ with {min(cpus_per_task, MAX_WORKERS)} workers; it never writes the manifest;
#   2. a merge job ({MERGE_JOB}) that starts once every task succeeded (--dependency=afterok): it checks the
#      shards, commits, validates and reports as a plain `chorus-batch run`, and writes its exit code to
#      STAGING/{MERGE_EXIT}. A failed task cancels it: rerun that shard, then the merge (commands below).
# STAGING: {"a new folder beside the manifest each submission" if staging is None else "the folder below"}, readable by its owner only.
# Logs: LOGS/{SHARD_JOB}-<array job>_<K>.out, LOGS/{MERGE_JOB}-<job>.out (LOGS: STAGING/logs unless set below).
# The run command (the interpreter that generated this script):
#   {shown}
set -euo pipefail
# Submitted with sbatch, this job's own output (slurm-<job>.out) was made with the submitting shell's umask (readable
# by all, 0644) and names the site, the manifest and the staging folder: owner-only, as the jobs' logs are
if [ -n "${{SLURM_JOB_ID:-}}" ]; then
    for fd in 1 2; do
        if [ -f "/proc/$$/fd/$fd" ] && [ -O "/proc/$$/fd/$fd" ]; then chmod go= -- "/proc/$$/fd/$fd" 2>/dev/null || true; fi
    done
fi
{whole}

python={shlex.quote(python)}
if [ ! -x "$python" ]; then
    echo "chorus-batch: the interpreter $python is missing on $(hostname); generate the script again there" >&2
    exit 2
fi
if ! command -v sbatch >/dev/null 2>&1; then
    echo "chorus-batch: Slurm's sbatch is not on PATH: {MISSING_SLURM_FIX}" >&2
    exit 2
fi
# (a SLURM_CONF that names no file: sbatch retried reading it for a minute, then failed)
if [ -n "${{SLURM_CONF:-}}" ] && [ ! -f "$SLURM_CONF" ]; then
    echo "chorus-batch: SLURM_CONF names $SLURM_CONF, which is no file: {BAD_SLURM_CONF}; {BAD_SLURM_CONF_FIX}" >&2
    exit 2
fi

{vsize_check}{guard}# The shards open the manifest read-only and cannot migrate one an older release wrote: upgraded here, once, before
# anything is submitted (a no-op when it is current; no manifest yet: the merge starts it).
db={shlex.quote(db)}
if [ -s "$db" ]; then
    "$python" -m chorus_batch upgrade --db "$db" >/dev/null || {{  # (an upgrade is said on stderr)
        code=$?
        echo "chorus-batch: the manifest $db could not be checked or upgraded to this release's schema (see above): nothing was submitted" >&2
        exit "$code"
    }}
fi

umask 077
{staging_line}
# A staging folder on a read-only or full file system: its mkdir stopped the script with mkdir's word alone (`run
# --slurm`: exit 3, "submitting the Slurm jobs failed"), or, full, every task failed without a log and the merge never
# ran. Checked (a folder made and a block written in it and in logs/) before anything is queued.
{{ {make_staging}
}} || {{ echo "{REFUSED_UNWRITABLE}: $staging could not be made (see above); nothing was submitted" >&2; exit 2; }}
{logs_line}
for folder in "$staging" "$logs"; do
    probe="$folder/.chorus-write-test-$$"
    if ! {{ mkdir -p -- "$folder" && printf '%4096s' '' > "$probe"; }}; then
        rm -f -- "$probe" 2>/dev/null || true
        {discard}echo "{REFUSED_UNWRITABLE}: $folder could not be written (see above: a read-only or full file system, a quota, or no permission); the shards write their lists of files there and every job its log; nothing was submitted" >&2
        exit 2
    fi
    rm -f -- "$probe"
done
# (sbatch reads % in --output as a pattern, %j the job id, even in the folder's name: a literal % is written %%)
rm -f -- "$staging/{MERGE_EXIT}"
# A --staging used before holds that submission's complete shards: a task of this one that fails before it starts its
# shard (a node without the interpreter, a site not mounted there) left the old one looking done, and a merge run by
# hand took it. Their completion records go (the shards write them again; other splits are the merge's to leave out).
# Under the staging folder's lock, alone (shards hold it shared, a merge alone): a merge reading last submission's shards,
# or a shard rerun by hand, was left with a shard said "incomplete (it failed or is still running)"
# Not while they are another manifest's shards, not merged yet (one --staging given to two manifests one after the
# other): that manifest's merge then found them all incomplete; refused (exit 4), naming them and what to do.
cleared=0
( {{ ! command -v flock >/dev/null 2>&1 || flock -n -x 9; }} || exit 4
  if compgen -G "$staging/shard-*-of-{shards}/scan.json" >/dev/null; then
      "$python" -c 'import sys; from chorus_batch.shards import submission_may_clear as may; sys.exit(may(*sys.argv[1:]))' \
          "$staging" "$db" {shards} >&2 || exit 5
  fi
  rm -f -- "$staging"/shard-*-of-{shards}/scan.json
  rm -f -- "$staging/{STAGING_LOCK}"  # (as the last holder does: an opener of it then finds it gone and opens anew)
) 9>>"$staging/{STAGING_LOCK}" || cleared=$?
if [ "$cleared" = 5 ]; then exit 4; fi  # (said above)
if [ "$cleared" != 0 ]; then
    echo "{REFUSED_BUSY}: a merge or a shard is running in the staging folder $staging (it holds $staging/{STAGING_LOCK}): this submission would remove its shards' completion records and the merge would find them incomplete; nothing was submitted; let it end (squeue -u $(id -un) shows its job), then submit again, or give --staging another folder" >&2
    exit 4
fi
export CHORUS_STAGING="$staging"

shards_job=$({_q(sbatch)} {comment} --job-name={SHARD_JOB} --array=0-{shards - 1} \\
    --chdir="$staging" --output="${{logs//\\%/%%}}/%x-%A_%a.out" <<'CHORUS_SHARD'
#!/bin/bash
set -euo pipefail
{has_python} || {{ {no_python}; exit 2; }}
exec {shard_cmd}
CHORUS_SHARD
) || {{ code=$?; {discard}echo "{REFUSED_ARRAY} ({shards} tasks, --array=0-{shards - 1}; sbatch exit code $code): nothing was submitted" >&2; exit 2; }}
shards_job=${{shards_job%%;*}}
# Stopped now (Ctrl-C, SIGTERM), the shards' array would stay queued with no merge after it: cancelled instead.
trap 'scancel "$shards_job" || true; echo "chorus-batch: stopped while submitting; cancelled the job array $shards_job of the shards: nothing will be merged" >&2; exit 130' INT TERM HUP

merge_job=$({_q(sbatch)} {comment} --job-name={MERGE_JOB} \\
    --dependency=afterok:"$shards_job" --kill-on-invalid-dep=yes \\
    --chdir="$staging" --output="${{logs//\\%/%%}}/%x-%j.out" <<'CHORUS_MERGE'
#!/bin/bash
set -uo pipefail
# Slurm stops a job (its time limit, scancel) with SIGTERM to each of its processes: the run stops, says what became of
# its version and exits 143; this shell, which died of it at once, waits for that and writes the code as any other
trap : TERM
if {has_python}; then
    {merge_cmd}
else
    {no_python}; (exit 2)
fi
code=$?
printf '%s\\n' "$code" > "$CHORUS_STAGING/{MERGE_EXIT}.part" && mv -f -- "$CHORUS_STAGING/{MERGE_EXIT}.part" "$CHORUS_STAGING/{MERGE_EXIT}"
{tidy}exit "$code"
CHORUS_MERGE
) || {{ scancel "$shards_job" || true; echo "{REFUSED_MERGE}; cancelled the shards' job array $shards_job: nothing will be merged; {STAGING_SAID}$staging" >&2; exit 2; }}
merge_job=${{merge_job%%;*}}
trap - INT TERM HUP

printf 'staging: %s\\n' "$staging"
printf 'logs: %s\\n' "$logs"
printf 'shards: job array %s (%s tasks)\\n' "$shards_job" {shards}
printf 'merge: job %s, after every shard succeeded; its exit code goes to %s\\n' "$merge_job" "$staging/{MERGE_EXIT}"
# --staging quoted as the command's other paths are (Python's shlex.quote: bare if plain, else in single quotes; bash's
# printf %q wrote a\\ b or $'a\\nb' beside --site 'a b')
quoted_staging=$staging
case $staging in
    '' | *[!A-Za-z0-9@%+=:,./_-]*) sq="'" dq='"'; quoted_staging="$sq${{staging//$sq/$sq$dq$sq$dq$sq}}$sq" ;;
esac
printf 'rerun a shard: %s --shard K/%s --staging %s\\n' {shlex.quote(shown)} {shards} "$quoted_staging"
printf 'rerun the merge: %s --merge %s\\n' {shlex.quote(shown)} "$quoted_staging"
{END_LINE}
"""


# ----------------------------------------------------------------------------- following the jobs
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
             "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "CONFIGURING", "RESIZING"}

# Reasons Slurm keeps a job pending for until the job or the cluster's configuration is changed: such a job waits for
# ever. Measured on slurm-wlm 22.05: `--cpus-per-task 4` on 2-CPU nodes is accepted by sbatch and waits as
# PartitionConfig, and the follower said "4 pending of 4" every night until someone looked.
_NEVER_BY_ITSELF = {
    "PartitionConfig": "they ask for more than the partition has or allows (CPUs per task, memory, nodes or time; "
                       "`scontrol show partition` shows its limits, `sinfo -N -l` its nodes)",
    "PartitionTimeLimit": "their --time is beyond the partition's MaxTime (`scontrol show partition`)",
    "PartitionNodeLimit": "they ask for more nodes than the partition allows",
    "BadConstraints": "they ask for resources no node of the partition has",
    "AccountNotAllowed": "their --account may not use the partition",
    "InvalidAccount": "Slurm does not know their --account, or this user is not in it",
    "QOSNotAllowed": "their QOS may not use the partition, or the account may not use it",
    "InvalidQOS": "Slurm does not know their QOS",
}
# Per-job limits of an account or a QOS (AssocMaxCpuPerJobLimit, QOSMaxWallDurationPerJobLimit, QOSMaxMemoryPerJob...):
# a job over one never starts; a limit on the jobs running at once (AssocGrp..., QOSMaxJobsPerUser...) clears by itself.
_PER_JOB_LIMIT = re.compile(r"(Assoc|QOS)Max\w*PerJob\w*")


# Job states in which Slurm itself ended a job, and what to submit differently. A shard stopped at its --time was said
# "shard 1 of 2: timeout" with a command that reruns it outside Slurm: submitted again as it was, it ends the same way.
_ENDED_BY_SLURM = {"TIMEOUT": ("Slurm stopped it at its time limit", "a longer --time"),
                   "OUT_OF_MEMORY": ("Slurm stopped it over its memory",
                                     "a larger --mem, or fewer --cpus-per-task (each task's --workers)")}


def ended_by_slurm(state: str) -> str | None:
    """Why Slurm ended a shard's task in `state` and what to submit instead, or None when Slurm did not end it itself."""
    if state not in _ENDED_BY_SLURM:
        return None
    why, instead = _ENDED_BY_SLURM[state]
    more = ", or more --shards (each hashes less)" if state == "TIMEOUT" else ""
    return f"{why}: submit again with {instead}{more}"


# The merge ended by Slurm: submitted again, every shard is hashed again, though they are done and wait in the staging
# folder. A merge stopped at its --time was said "merge job 8 exited with code 143" and no more (its shell writes 143
# to merge.exit; the merge's own log says "terminated (SIGTERM)"), unlike a shard stopped so.
_MERGE_ENDED_BY_SLURM = {"TIMEOUT": ("at its time limit", "a longer --time"),
                         "OUT_OF_MEMORY": ("over its memory", "a larger --mem")}


def merge_ended_by_slurm(job: "Submitted", state: str, committed: bool = False) -> str | None:
    """Why Slurm ended the merge job in `state` and what to run instead, or None when Slurm did not end it itself.
    `committed`: its log says its version had been committed before it was stopped (that version stays)."""
    if state not in _MERGE_ENDED_BY_SLURM:
        return None
    why, instead = _MERGE_ENDED_BY_SLURM[state]
    if committed:  # (a merge run again would say "merged already": nothing to run now, only the next submission's)
        return (f"Slurm stopped the merge job {job.merge_job} {why} ({state}) after it had committed its version, "
                f"which stays; give the next submission {instead}")
    return (f"Slurm stopped the merge job {job.merge_job} {why} ({state}): the shards are done and stay in "
            f"{job.staging}; merge them alone, in a job with {instead}"
            + (f": {job.rerun_merge}" if job.rerun_merge else "")
            + " (submitting again would hash every shard again)")


def never_starts(reason: str) -> str | None:
    """Why a job pending for `reason` (squeue's %r) will not start by itself, or None when it may."""
    if reason in _NEVER_BY_ITSELF:
        return _NEVER_BY_ITSELF[reason]
    if _PER_JOB_LIMIT.fullmatch(reason):
        return f"they are over a per-job limit of the account or QOS ({reason}; `sacctmgr show assoc` / `show qos`)"
    return None


@dataclass
class Submitted:
    """What the script printed when it submitted the jobs."""

    array_job: str
    merge_job: str
    shards: int
    staging: Path
    logs: Path
    rerun_shard: str = ""  # the command with "K/<N>" for the shard
    rerun_merge: str = ""
    lines: list[str] = field(default_factory=list)
    merge_started: bool = False  # follow saw the merge job run (it may have committed)

    def merge_log(self) -> Path:
        return self.logs / f"{MERGE_JOB}-{self.merge_job}.out"

    def shard_done(self, k: int) -> bool:
        return (self.staging / f"shard-{k}-of-{self.shards}" / "scan.json").exists()

    def shard_log(self, k: int) -> Path:
        return self.logs / f"{SHARD_JOB}-{self.array_job}_{k}.out"

    def shard_command(self, k: int) -> str:
        return self.rerun_shard.replace(f" --shard K/{self.shards} ", f" --shard {k}/{self.shards} ", 1)


def parse_submitted(text: str) -> Submitted:
    """The job ids and folders from the lines the script prints."""
    found: dict[str, str] = {}
    patterns = {
        "staging": r"^staging: (.*)$", "logs": r"^logs: (.*)$",
        "array": r"^shards: job array (\d+) \((\d+) tasks\)$", "merge": r"^merge: job (\d+),",
        "rerun_shard": r"^rerun a shard: (.*)$", "rerun_merge": r"^rerun the merge: (.*)$",
    }
    for line in text.splitlines():
        for key, pattern in patterns.items():
            match = re.match(pattern, line)
            if match:
                found[key] = line if key == "array" else match.group(1)
    if not {"staging", "logs", "array", "merge"} <= found.keys():
        raise ChorusError("the Slurm script did not say which jobs it submitted", where="its output:\n" + text,
                          fix="submit it with bash and read its messages; was it generated by `chorus-batch slurm-script`?")
    array = re.match(patterns["array"], found["array"])
    return Submitted(array_job=array.group(1), merge_job=re.match(r"\d+", found["merge"]).group(0),
                     shards=int(array.group(2)), staging=Path(found["staging"]), logs=Path(found["logs"]),
                     rerun_shard=found.get("rerun_shard", ""), rerun_merge=found.get("rerun_merge", ""),
                     lines=text.splitlines())


def require_slurm(*tools: str) -> None:
    for tool in tools or ("sbatch", "squeue"):
        if shutil.which(tool) is None:
            raise UsageError(f"Slurm's {tool} is not on PATH: {MISSING_SLURM_FIX}", where=f"PATH={os.environ.get('PATH', '')}",
                             fix=MISSING_SLURM_FIX)
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):  # (sbatch retried reading it for a minute, then failed)
        raise UsageError(f"SLURM_CONF names {conf}, which is {'a folder' if os.path.isdir(conf) else 'not there'}: "
                         f"{BAD_SLURM_CONF}", where="SLURM_CONF", fix=BAD_SLURM_CONF_FIX)


# A squeue or scontrol that hangs (a controller that takes connections and never answers) is given up on after this
# long and counts as failed: the follower says so and asks again, as when it fails (Slurm's clients give up by
# themselves after MessageTimeout, 10 s by default, and a few retries).
QUERY_TIMEOUT_S = 120


def _query(args: list[str]) -> subprocess.CompletedProcess | None:
    """A Slurm client's answer to the follower; None when it did not answer in QUERY_TIMEOUT_S. The user's
    SQUEUE_* variables (SQUEUE_NAMES, SQUEUE_PARTITION, SQUEUE_ACCOUNT, ...) are left out: they filter squeue's
    answer, command-line options do not override them, and a job filtered out by them looked finished."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SQUEUE_")}
    try:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """job id (array tasks as '<array>_<K>') -> (state, reason) of the jobs Slurm still knows (also
    finished ones, until MinJobAge); None when squeue failed (or did not answer) for another reason than
    unknown ids."""
    proc = _query(["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(job_ids)}",
                   "--format=%i|%T|%r"])
    if proc is None:
        return None
    if proc.returncode != 0:
        return {} if "Invalid job id" in proc.stderr else None
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def scontrol_exit(job_id: str) -> tuple[str, int | None]:
    """(JobState, exit code) of a job slurmctld still knows; a signal s counts as 128 + s."""
    proc = _query(["scontrol", "show", "job", job_id])
    if proc is None:
        return "", None
    state = re.search(r"\bJobState=(\S+)", proc.stdout)
    code = re.search(r"\bExitCode=(\d+):(\d+)", proc.stdout)
    if proc.returncode != 0 or not state:
        return "", None
    if not code:
        return state.group(1), None
    status, signal = int(code.group(1)), int(code.group(2))
    return state.group(1), (128 + signal if signal else status)


def _read_exit(path: Path, wait_s: float) -> int | None:
    """The merge's exit code file; waits a little (a shared file system may show it late)."""
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


_MERGE_ERROR = re.compile(r"^chorus-batch(?: [a-z-]+)?: error: ")
_MERGE_COMMITTED = re.compile(r"^(?:version \S+ committed to |no changes since version )")
_MERGE_STOPPED = re.compile(r"^chorus-batch: (?:hung up|terminated|stopped by|quit|interrupted)\b.*; ")


def _merge_outcome(log: Path, code: int) -> list[str]:
    """What the merge said of its outcome, from its log: the version it committed (exit 0 or 1), or its error with
    where and what to do (exit 2 and above). `run --slurm` followed the jobs for hours and then said only "merge job
    N exited with code 2 (log ...)": stale shards, a manifest locked by another run, were told in the log alone."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 256 * 1024))  # (the end: a log of warnings can be long)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    if code >= 2:
        starts = [i for i, line in enumerate(lines) if _MERGE_ERROR.match(line)]
        if not starts:  # (stopped by a signal: "chorus-batch: terminated (SIGTERM); nothing was committed")
            return [line for line in lines if _MERGE_STOPPED.match(line)][-1:] if code >= 128 else []
        said = [lines[starts[-1]]]
        for line in lines[starts[-1] + 1:]:
            if not line.startswith("  "):
                break
            said.append(line)
        return said[:20]
    return [line for line in lines if _MERGE_COMMITTED.match(line)][:1]


def _pending_reasons(job: Submitted, states: dict[str, tuple[str, str]]) -> str:
    """The reasons squeue gives for the shards' pending tasks (" (Resources)"), "" when it gives none."""
    reasons = dict.fromkeys(reason for k in range(job.shards)
                            for state, reason in [states.get(f"{job.array_job}_{k}", ("", ""))]
                            if state == "PENDING" and reason and reason != "None")
    return f" ({', '.join(reasons)})" if reasons else ""


def _stuck(job: Submitted, states: dict[str, tuple[str, str]], out: Callable[[str], None]) -> int | None:
    """Jobs of this submission pending for a reason that does not clear by itself (never_starts): cancelled, said with
    what to change, and exit 2; None when there are none."""
    stuck = {}  # reason -> the jobs held for it
    for k in range(job.shards):
        state, reason = states.get(f"{job.array_job}_{k}", ("", ""))
        if state == "PENDING" and never_starts(reason):
            stuck.setdefault(reason, []).append(f"shard {k} (task {job.array_job}_{k})")
    state, reason = states.get(job.merge_job, ("", ""))
    if state == "PENDING" and never_starts(reason):
        stuck.setdefault(reason, []).append(f"the merge (job {job.merge_job})")
    if not stuck:
        return None
    said = cancel(job)
    held = "; ".join(f"{', '.join(jobs)}: pending for {reason}: {never_starts(reason)}" for reason, jobs in stuck.items())
    out(f"Slurm will not start these jobs as they were submitted, and they would wait for ever: {held}")
    if said is not None:
        out(not_cancelled(job, said))
    else:
        out(f"cancelled the shards' job array {job.array_job} and the merge job {job.merge_job}; nothing was committed")
    shards_done = all(_shard_progress(job, states, k) == "done" for k in range(job.shards))
    if shards_done and job.rerun_merge:  # (only the merge was held: the shards' work is in the staging folder)
        out(f"the shards are done: merge them on a node that has what the merge asks for: {job.rerun_merge}")
    out("submit again with fewer --cpus-per-task, a smaller --mem or --time, or a --partition / --account that allows "
        "them (the cluster's administrators know its limits)")
    return int(ExitCode.USAGE)


def _shard_progress(job: Submitted, states: dict[str, tuple[str, str]], k: int) -> str:
    """"done", "failed", "cancelled", "running" or "pending": shard k's task by its state, or, once Slurm forgot it,
    by its shard's scan.json (the script removes those of an earlier submission into the same staging folder)."""
    state = states.get(f"{job.array_job}_{k}", ("", ""))[0]
    if state == "COMPLETED" or (not state and job.shard_done(k)):
        return "done"
    if state == "CANCELLED":  # (by scancel or an administrator: the progress line said "failed", the summary not)
        return "cancelled"
    if state in _TERMINAL:
        return "failed"
    return "running" if state in _RUNNING else "pending"


SQUEUE_DOWN_SAY_S = 600  # while squeue keeps failing, the follower says so this often


def follow(job: Submitted, *, poll_s: float = 5, out: Callable[[str], None] = print,
           exit_wait_s: float = 30) -> int:
    """Poll squeue until the merge job leaves; print progress lines; return the merge's exit code.
    The merge cancelled because a shard failed: the failed shards, their logs and the commands that
    rerun them are printed, and the exit code is 2 (as the merge itself says for a missing shard)."""
    last = ""
    unknown_since: float | None = None
    while True:
        states = squeue_states([job.array_job, job.merge_job])
        if states is None:  # slurmctld busy or restarting: try again
            now = time.monotonic()
            if unknown_since is None:
                unknown_since = said_at = now
                out("squeue failed; trying again")
            elif now - said_at >= SQUEUE_DOWN_SAY_S:
                # (the controller down for hours: one line, then silence, as if the follower hung)
                said_at = now
                out(f"squeue has failed for {int(now - unknown_since) // 60} min (the cluster's controller does not "
                    "answer): still trying; the jobs are Slurm's and go on, or wait, without this follower; Ctrl-C "
                    f"tries to cancel them (`scancel {job.array_job} {job.merge_job}` once it answers)")
            time.sleep(poll_s)
            continue
        if unknown_since is not None:
            out(f"squeue answers again after {int(time.monotonic() - unknown_since)} s")
        unknown_since = None
        counts = {"pending": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
        for k in range(job.shards):
            counts[_shard_progress(job, states, k)] += 1
        merge_state, reason = states.get(job.merge_job, ("", ""))
        if merge_state in _RUNNING or (merge_state in _TERMINAL and merge_state != "CANCELLED"):
            job.merge_started = True
        merge_text = (merge_state.lower() + (f" ({reason})" if reason and reason != "None" else "")) or "gone"
        line = (f"shards {job.array_job}: " + ", ".join(f"{n} {what}" + (_pending_reasons(job, states)
                                                                          if what == "pending" and n else "")
                                                       for what, n in counts.items() if n or what != "cancelled")
                + f" of {job.shards}; merge {job.merge_job}: {merge_text}")
        if line != last:
            out(line)
            last = line
        stuck = _stuck(job, states, out)
        if stuck is not None:
            return stuck
        if merge_state in _TERMINAL or not merge_state:
            break
        time.sleep(poll_s)

    code = _read_exit(job.staging / MERGE_EXIT, exit_wait_s if merge_state in ("COMPLETED", "FAILED", "") else 1)
    if code is not None and merge_state == "CANCELLED" and not job.merge_log().exists():
        # Cancelled before it started (a shard failed): that merge.exit is another merge's in the same --staging (two
        # manifests' submissions given one folder), and was said as this one's, its exit code this command's
        code = None
    if code is not None:
        out(f"merge job {job.merge_job} exited with code {code} (log {job.logs / f'{MERGE_JOB}-{job.merge_job}.out'})"
            + (":" if (said := _merge_outcome(job.merge_log(), code)) else ""))
        for line in said:
            out("  " + line)
        if code >= 128:  # (killed by a signal: Slurm's, at the job's --time or over its --mem, or another's)
            ended = merge_ended_by_slurm(job, merge_state or scontrol_exit(job.merge_job)[0],
                                         committed=any("had been committed before; it stays" in line for line in said))
            if ended:
                out(ended)
        return code
    state, code = scontrol_exit(job.merge_job)
    state = state or merge_state
    never_ran = state == "CANCELLED" and not job.merge_started and not job.merge_log().exists()
    if (state == "CANCELLED" and reason.startswith("Dependency")) or never_ran or (not state and counts["done"] < job.shards):
        # (by the tasks' states, as counted above: a scan.json alone is no proof, a task may have failed after it)
        missing = [k for k in range(job.shards) if _shard_progress(job, states, k) != "done"]
        # Tasks still queued or running (the merge cancelled by hand, or other tasks than the failed one not done yet)
        # were told "rerun it": a rerun beside its own task is refused (its shard's lock), or hashes the shard twice
        going = [k for k in missing if _shard_progress(job, states, k) in ("running", "pending")
                 and states.get(f"{job.array_job}_{k}", ("", ""))[0]]
        shard_states = {k: (states.get(f"{job.array_job}_{k}", ("", ""))[0]
                            or scontrol_exit(f"{job.array_job}_{k}")[0]  # a cancelled pending task leaves squeue at once
                            or "no longer known to Slurm") for k in missing}
        if state == "CANCELLED" and not counts["failed"] + counts["cancelled"] and reason != "DependencyNeverSatisfied":
            # (no shard failed: the merge was cancelled by hand, `scancel <merge>`, while it waited for the shards.
            # It was said "did not run: N shards did not finish", as if they had failed, and the array ran on unsaid)
            out(f"the merge job {job.merge_job} was cancelled before it ran (by scancel or an administrator: no "
                "shard failed); nothing was committed"
                + (f"; the shards' job array {job.array_job} still has {len(going)} of {plural(job.shards, 'task')} queued or "
                   f"running: let them finish, then merge by hand (below), or `scancel {job.array_job}`" if going else
                   ""))
        else:
            # Shards cancelled, none failed (`scancel` of the whole submission, or of its array): said "did not
            # finish" with a rerun command for each, as if they had failed, and not that submitting again is the way
            # to hash the whole site (one rerun by hand per shard, for 64 shards)
            cancelled = [k for k in missing if k not in going and shard_states[k] == "CANCELLED"]
            all_cancelled = bool(cancelled) and len(cancelled) == len(missing) - len(going)
            out(f"the merge job {job.merge_job} did not run: {len(missing)} of {plural(job.shards, 'shard')} did not finish"
                + (f" ({len(going)} still queued or running)" if going else "")
                + (" (cancelled, by scancel or an administrator: none failed)" if all_cancelled else "")
                + "; nothing was committed"
                + ("; to hash the whole site again, submit again (`run --slurm`, or sbatch the script) rather than "
                   "rerun each shard" if all_cancelled and counts["done"] == 0 and not going else ""))
        for k in missing:
            shard_state = shard_states[k]
            if k in going:
                out(f"  shard {k} of {job.shards}: {shard_state.lower()} (task {job.array_job}_{k}, still in Slurm's "
                    f"queue: let it finish, or `scancel {job.array_job}_{k}`); log {job.shard_log(k)}")
                continue
            out(f"  shard {k} of {job.shards}: {shard_state.lower()}"
                + (f" ({ended})" if (ended := ended_by_slurm(shard_state)) else "")
                + f"; log {job.shard_log(k)}")
            if job.rerun_shard:
                out(f"    rerun it: {job.shard_command(k)}")
        if job.rerun_merge:
            out(f"  then merge: {job.rerun_merge}")
        return int(ExitCode.USAGE)
    out(f"the merge job {job.merge_job} ended {state.lower() or 'unseen'} without writing {job.staging / MERGE_EXIT}"
        f"; see its log {job.logs / f'{MERGE_JOB}-{job.merge_job}.out'}")
    if ended := merge_ended_by_slurm(job, state):  # (a cgroup's OOM kill ends the job's shell with the merge)
        out(ended)
    return code if code else int(ExitCode.FAILED)


@contextlib.contextmanager
def _stops_ignored():
    """This process's stop signals (SIGINT and errors.STOP_SIGNALS) ignored while the block tidies up after one."""
    import signal
    import threading

    from .errors import STOP_SIGNALS

    stops = [getattr(signal, name) for name in ("SIGINT", *STOP_SIGNALS) if hasattr(signal, name)]
    main = threading.current_thread() is threading.main_thread()  # (only the main thread may set handlers)
    held = {signum: signal.signal(signum, signal.SIG_IGN) for signum in stops} if main else {}
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)


# What scancel says of a job that is no longer there to cancel (it ended meanwhile): not a failure to cancel it
_GONE = ("already completed", "already completing", "already finished", "invalid job id")  # (gone: nothing to cancel)


def cancel(job: Submitted) -> str | None:
    """scancel the jobs, whatever signal comes meanwhile: a second Ctrl-C (it reaches the terminal's whole process
    group) killed scancel with it and left the jobs running. In a session of its own, with this process's stop
    signals held until it is done. None when they were cancelled (or had ended), else what scancel said: with the
    controller down it fails (after some seconds), the jobs stay queued, and the follower had said "cancelled"."""
    with _stops_ignored():
        proc = subprocess.run(["scancel", job.array_job, job.merge_job], capture_output=True, text=True,
                              start_new_session=True)
    # (its exit code is no guide: a controller it cannot resolve fails every job with exit code 0)
    errors = [line.strip().removeprefix("scancel: ") for line in (proc.stderr or "").splitlines()
              if "error" in line.lower() and not any(gone in line.lower() for gone in _GONE)]
    if not errors and proc.returncode == 0:
        return None
    said = list(dict.fromkeys(line for line in errors if "attempt number" not in line))  # (its retries: noise)
    return "; ".join(said[-3:]) or f"exit code {proc.returncode}"


def not_cancelled(job: Submitted, said: str) -> str:
    """What to say when scancel failed: the jobs may still run, and how to cancel them once the cluster answers."""
    return (f"could not cancel the shards' job array {job.array_job} and the merge job {job.merge_job} (scancel: "
            f"{said}): they may still be queued or running, and the merge may still commit; once the cluster answers, "
            f"`scancel {job.array_job} {job.merge_job}` cancels them (`squeue --me` shows them)")


class _Lines:
    """The follower's output: a reader that left (`run --slurm | head`) ends it quietly, but the jobs are followed
    to their end all the same, so that the exit code is the merge's (not a success the night did not have)."""

    def __init__(self, out: Callable[[str], None]):
        self.out, self.gone = out, False

    def __call__(self, line: str) -> None:
        if self.gone:
            return
        try:
            self.out(line)
        except BrokenPipeError:
            self.gone = True
            with contextlib.suppress(OSError, ValueError):  # what is buffered for the reader that left: dropped
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, sys.stdout.fileno())
                os.close(null)


SUBMIT_FINISH_S = 120  # an interrupted submission is let finish this long (two sbatch calls), then stopped


def submit(script_text: str, *, locked: str | None = None) -> Submitted:
    """Run the script with bash from a private temporary file; the jobs it submitted.

    Interrupted (Ctrl-C, SIGTERM, SIGHUP), the submission is let finish and the jobs it submitted are cancelled
    before the interruption goes on (exc.outcome says so): a Ctrl-C that killed the script between its two sbatch
    calls left the shards' array queued with no merge after it and no one to cancel it. The script runs in a session
    of its own so that the terminal's Ctrl-C (sent to the whole foreground group) does not reach it there."""
    require_slurm("sbatch")
    fd, name = tempfile.mkstemp(prefix="chorus-slurm-", suffix=".sbatch")  # owner-only (0600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(script_text)
        # (`locked`: the manifest's submission lock this process holds, which the script then does not take again)
        env = {**os.environ, LOCKED_ENV: locked} if locked else None
        script = subprocess.Popen(["bash", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        try:
            stdout, stderr = script.communicate()
        except (KeyboardInterrupt, Stopped) as exc:
            exc.outcome = _withdraw(script)
            raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
    try:
        return _submitted(subprocess.CompletedProcess(script.args, script.returncode, stdout, stderr))
    except (KeyboardInterrupt, Stopped) as exc:
        # Stopped once the script had queued the jobs, before their ids were handed back: nothing cancelled them and
        # the command said nothing of them (the array hashed the site, the merge committed, after "stopped")
        exc.outcome = _withdrawn(stdout)
        raise


def _submitted(proc: subprocess.CompletedProcess) -> Submitted:
    """The jobs the script's run submitted, or the error its output says."""
    if proc.returncode != 0 and (REFUSED_ARRAY in proc.stderr or REFUSED_MERGE in proc.stderr
                                 or REFUSED_NO_CLUSTER in proc.stderr):
        raise _refused(proc.stderr)
    if proc.returncode == 4 and REFUSED_BUSY in proc.stderr:  # another submission under way: said as a lock is
        from .errors import ManifestLocked

        said = next(line for line in proc.stderr.splitlines() if REFUSED_BUSY in line).removeprefix("chorus-batch: ")
        what, _sep, then = said.rpartition("; nothing was submitted; ")
        raise ManifestLocked(what + "; nothing was submitted or committed", where="the Slurm script's first step",
                             fix=then or "wait for the other submission to end, then submit again")
    if proc.returncode != 0 and REFUSED_UNWRITABLE in proc.stderr:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        said = next(line for line in lines if REFUSED_UNWRITABLE in line).removeprefix("chorus-batch: ")
        # (mkdir's or bash's own word, without the script's temporary path and line that bash puts first)
        why = "; ".join(re.sub(r"^\S*: line [0-9]+: ", "", line) for line in lines if REFUSED_UNWRITABLE not in line)
        raise UsageError(said.replace(" (see above", f" ({why}" if why else " (", 1).replace("; nothing was submitted", "")
                         + "; nothing was submitted or committed", where="--staging (or <db>.staging, the default)",
                         fix="free space there, or give --staging a writable folder on a file system every node of "
                             "the cluster reaches")
    if proc.returncode != 0 and REFUSED_VSIZE in proc.stderr:
        said = next(line for line in proc.stderr.splitlines() if REFUSED_VSIZE in line).removeprefix("chorus-batch: ")
        raise UsageError(said.replace("; nothing was submitted", "") + "; nothing was submitted or committed",
                         where="--mem and the cluster's VSizeFactor (`scontrol show config | grep VSizeFactor`)",
                         fix="pass a larger --mem (the message says how much), or ask the cluster's administrators")
    if proc.returncode != 0:
        raise ChorusError(f"submitting the Slurm jobs failed (exit code {proc.returncode})",
                          where=(proc.stderr or proc.stdout).strip() or "no output",
                          fix="read the message above; `chorus-batch slurm-script ... > job.sbatch && bash -x job.sbatch` shows each step")
    if proc.stderr.strip():  # what the submission said beside the job ids (the manifest upgraded before it)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(proc.stderr if proc.stderr.endswith("\n") else proc.stderr + "\n")
    job = parse_submitted(proc.stdout)
    pause("slurm-submitted")  # (tests: a stop once the jobs are queued, before they are handed back)
    return job


def _refused(stderr: str) -> UsageError:
    """sbatch refused the array (more tasks than the cluster's MaxArraySize, a QOS limit on submitted jobs, a
    partition or account it does not know) or the merge job: sbatch's own message, and what to do."""
    said = [line.strip() for line in stderr.splitlines() if line.strip()]
    sbatch = "; ".join(line for line in said if not line.startswith("chorus-batch:")) or "(sbatch printed nothing)"
    ours = next(line for line in said if line.startswith((REFUSED_ARRAY, REFUSED_MERGE, REFUSED_NO_CLUSTER)))
    array = ours.startswith((REFUSED_ARRAY, REFUSED_NO_CLUSTER))
    tasks = re.search(r"\((\d+) tasks", ours)
    low = sbatch.lower()
    if array and any(said in low for said in NO_CLUSTER):  # sbatch found no cluster: nothing about the jobs to change
        tool = "squeue" if ours.startswith(REFUSED_NO_CLUSTER) else "sbatch"  # (squeue: the script's first command)
        return UsageError(f"{tool} reaches no Slurm cluster from this machine: {sbatch}; nothing was submitted and "
                          "nothing was committed", where=f"{tool} on {os.uname().nodename}",
                          fix="run on a login node of the cluster (where `sinfo` answers), or have the cluster's "
                              "administrators set up its slurm.conf here (SLURM_CONF names another)")
    if array and ("array" in low or "maxarraysize" in low or "maxsubmit" in low or "job limit" in low):
        fix = (f"give fewer --shards than {tasks.group(1) if tasks else 'these'} (a cluster's MaxArraySize caps an "
               "array at MaxArraySize - 1 tasks; `scontrol show config | grep -i MaxArraySize` shows it, and a QOS "
               "may cap the jobs one user has queued), or ask the cluster's administrators to raise the limit")
    else:
        fix = ("change what sbatch names (--partition, --account, --mem, --time, --cpus-per-task; `sinfo` and "
               "`sacctmgr show assoc user=$USER` show what this cluster takes), or ask the cluster's administrators")
    what = ("sbatch refused the shards' job array" if array else
            "sbatch refused the merge job (the shards' job array was cancelled)")
    staging = ours.partition("; " + STAGING_SAID)[2] if not array else ""
    # The staging folder the refused submission made (or reused) stays: it was not said where, nor what is in it
    kept = (f"; the staging folder {staging} stays, with the cancelled tasks' logs (and what a task that had started "
            "wrote): nothing in it is to be merged; remove it, or submit again (a new submission makes its own "
            "folder; a --staging folder is reused)" if staging else "")
    return UsageError(f"{what}: {sbatch}; " + ("nothing was submitted and " if array else "") + "nothing was committed"
                      + kept, where="sbatch" + (f" --array=0-{int(tasks.group(1)) - 1}" if array and tasks else ""),
                      fix=fix)


def _withdraw(script: subprocess.Popen) -> str:
    """After a stop signal during the submission: let the script finish, cancel the jobs it submitted; what became
    of them, for the message."""
    import signal

    with _stops_ignored():
        # (said at once: a submission sbatch keeps retrying, a controller that does not answer, a slurm.conf missing,
        # kept the stopped command silent for a minute, and a second Ctrl-C did nothing)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"chorus-batch: stopping: the submission is let finish (at most {SUBMIT_FINISH_S} s), then "
                             "the jobs it queued are cancelled\n")
            sys.stderr.flush()
        try:
            stdout, _stderr = script.communicate(timeout=SUBMIT_FINISH_S)
        except subprocess.TimeoutExpired:  # sbatch hangs (slurmctld unreachable): stopped
            # SIGTERM first: the script's trap cancels a shards' array it queued (slurm_script); then SIGKILL
            with contextlib.suppress(OSError):
                os.killpg(script.pid, signal.SIGTERM)
            try:
                _stdout, stderr = script.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(script.pid, signal.SIGKILL)
                _stdout, stderr = script.communicate()
            stopped = f"the submission did not finish in {SUBMIT_FINISH_S} s and was stopped: nothing was committed"
            cancelled = re.search(r"cancelled the job array (\d+) of the shards", stderr or "")
            if cancelled:
                return f"{stopped}; it cancelled the shards' job array {cancelled.group(1)} it had queued"
            return (f"{stopped}; see `squeue --me --name={SHARD_JOB},{MERGE_JOB}` for jobs it may have queued, and "
                    "scancel them")
        return _withdrawn(stdout)  # (still with the stops ignored: no gap before it ignores them itself)


def _withdrawn(stdout: str) -> str:
    """Cancel the jobs a finished submission printed (its `stdout`), whatever signal comes meanwhile; what became of
    them, for the message."""
    with _stops_ignored():
        try:
            job = parse_submitted(stdout)
        except ChorusError:  # it failed (a shards' array it had queued it cancelled itself) or queued nothing
            return "the submission ended without jobs to follow: nothing was committed"
        said = cancel(job)
    if said is not None:
        return f"the submission was let finish; then {not_cancelled(job, said)}"
    return (f"the submission was let finish, then its shards' job array {job.array_job} and merge job {job.merge_job} "
            "were cancelled before the merge ran: nothing was committed")


@contextlib.contextmanager
def submission_lock(db: str, argv: list[str]):
    """One `run --slurm` per manifest at a time, held from before it submits until its merge ended: a second one
    beside it (a cron line and a user at a login node, two cron lines) hashed the whole site again, and its merge
    was refused as stale once the first had committed (exit 2, "rerun the shards"); with the same --staging, the
    second script removed the first's completion records and its shards were refused by the first's locks. An OS
    lock on `<db>.slurm.lock` as the staging folder's (let go when its holder exits or is killed; the file goes with
    its last holder, so a submission sbatch refused leaves nothing beside the manifest)."""
    from .errors import ManifestLocked
    from .shards import _flock
    from .store.lock import command_of, holder_named, write_holder
    from .fsutil import write_private

    db = _one_name(os.path.abspath(db))  # (the same manifest by a relative path from another folder, or a link)
    path, holder_path = Path(db + ".slurm.lock"), Path(db + ".slurm.lock.json")

    def busy(_fd: int) -> Exception:
        holder = holder_named(holder_path) or "a process that has not said who yet"
        return ManifestLocked(
            f"another `chorus-batch run --slurm` (or the Slurm script, submitted with sbatch) is submitting or "
            f"following Slurm jobs for the manifest {db}: "
            f"{holder}; a second submission would hash the whole site again, and its merge would be refused once "
            "the first committed", where=str(path),
            fix="this `run --slurm` submitted nothing; wait for that one to end (it exits with its merge's exit "
                "code), then run again if the site changed since")

    with _flock(path, exclusive=True, busy=busy, unlocked="do not run two `run --slurm` for one manifest at once",
                cannot="make the manifest's folder writable by this user (the merge writes there too)",
                what="the lock of the manifest's Slurm submissions"):
        _jobs_left_running(holder_path, path, db)
        details = {"command": command_of(argv)}
        write_holder(holder_path, details)

        def submitted(job: Submitted) -> None:
            """Name the jobs in the holder's record: a holder killed (SIGKILL, a login node's OOM killer) while it
            follows them lets go of the lock, and its record then tells the next `run --slurm` which jobs to ask
            squeue about. (The record's pid, host and start are kept: it is rewritten whole.)"""
            from .store.lock import _details

            try:  # (read without waiting, as the lock's own details are: a named pipe there held the follower)
                record = json.loads(_details(holder_path).decode("utf-8"))
            except (OSError, ValueError):
                record = {}
            record.update({"jobs": [job.array_job, job.merge_job], "staging": str(job.staging),
                           "merge_log": str(job.merge_log())})
            with contextlib.suppress(OSError):  # (only informs the next one; the lock itself holds)
                write_private(holder_path, json.dumps(record).encode())

        try:
            yield submitted
        finally:
            with contextlib.suppress(OSError):
                holder_path.unlink()


def _jobs_left_running(holder_path: Path, lock_path: Path, db: str) -> None:
    """Refuse (exit 4) while the jobs an earlier `run --slurm` for `db` submitted are still queued or running in Slurm
    though that one is gone: killed (SIGKILL) while it followed them, it let go of the lock and could cancel nothing,
    and the next `run --slurm` submitted a second array beside the first's (the whole site hashed twice, the later
    merge refused as stale, or with one --staging, each array's shards refused by the other's locks). Its record (the
    holder's details, left behind as it died) names the jobs; squeue says whether they still run."""
    from .errors import ManifestLocked
    from .store.lock import _details, _holder_of

    try:  # (read without waiting: a named pipe in place of the record held `run --slurm` before it submitted)
        record = json.loads(_details(holder_path).decode("utf-8"))
        jobs = [str(job) for job in record["jobs"] if re.fullmatch(r"[0-9]+", str(job), re.ASCII)]
        who = _holder_of(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # (none left: the last one ended as it should, or was killed before it submitted anything)
    if not jobs:
        return
    states = squeue_states(jobs)
    staging = record.get("staging")
    where = f" (staging folder {staging})" if isinstance(staging, str) else ""
    if states is None:
        raise ManifestLocked(
            f"an earlier `chorus-batch run --slurm` for the manifest {db} ({who}) ended without ending its Slurm jobs "
            f"{', '.join(jobs)}{where}, and squeue does not answer, so whether they still run is not known; this one "
            "submitted nothing", where=str(holder_path),
            fix=f"try again once `squeue -j {','.join(jobs)}` answers; to submit anyway, cancel them first "
                f"(`scancel {' '.join(jobs)}`) or remove {holder_path} once you know they have ended")
    live = sorted({job.split("_", 1)[0] for job, (state, _reason) in states.items() if state not in _TERMINAL})
    if not live:
        return
    merge_log = record.get("merge_log")
    raise ManifestLocked(
        f"an earlier `chorus-batch run --slurm` for the manifest {db} ({who}) was stopped without cancelling its "
        f"Slurm jobs, and job {', '.join(live)} of them {'is' if len(live) == 1 else 'are'} still queued or running"
        f"{where}: a second submission now would hash the whole site again beside them, and one of the two merges "
        "would be refused; this one submitted nothing", where=str(holder_path),
        fix=f"let them finish: their merge commits as it would have (`squeue -j {','.join(jobs)}`"
            + (f"; its log: {merge_log}" if isinstance(merge_log, str) else "") + "), then run again if the site "
            f"changed since; or cancel them (`scancel {' '.join(jobs)}`) and run again")


def submit_and_follow(script_text: str, *, poll_s: float = 5, out: Callable[[str], None] = print,
                      db: str | None = None, argv: list[str] | None = None,
                      on_submitted: Callable[[Submitted], None] | None = None, _locked: str | None = None) -> int:
    """Submit the script (bash), follow the jobs with squeue, return the merge's exit code; with `db`, under that
    manifest's submission lock (submission_lock). Ctrl-C (or SIGTERM/SIGHUP as Stopped) cancels the jobs it
    submitted, then is raised again."""
    require_slurm("sbatch", "squeue")
    if db is not None:
        with submission_lock(db, argv or ["run"]) as submitted:
            return submit_and_follow(script_text, poll_s=poll_s, out=out, on_submitted=submitted,
                                     _locked=_one_name(os.path.abspath(db)) + ".slurm.lock")
    out = _Lines(out)
    job = submit(script_text, locked=_locked)
    try:  # (from the jobs' ids on: a stop while the holder's record names them cancels them too)
        if on_submitted is not None:
            on_submitted(job)
        for line in job.lines:
            out(line)
        return follow(job, poll_s=poll_s, out=out)
    except (KeyboardInterrupt, Stopped) as exc:
        said = cancel(job)
        if said is not None:  # (the controller down: the jobs stay queued, and will run once it is back)
            exc.outcome = not_cancelled(job, said)
            raise
        cancelled = f"cancelled the shards' job array {job.array_job} and the merge job {job.merge_job}"
        if job.merge_started or job.merge_log().exists():  # (its log: it started after the last look)
            # The merge was stopped by scancel's SIGTERM: a version it committed before stays; its log says which.
            exc.outcome = (f"{cancelled}; the merge had started: a version it committed before it was stopped stays "
                           f"(its log {job.merge_log()} says; `chorus-batch versions` shows the latest)")
        else:
            exc.outcome = f"{cancelled} before the merge ran: nothing was committed"
        out(cancelled)
        raise
