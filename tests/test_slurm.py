"""Slurm: the generated job-array + merge script, and running it on a real single-node cluster
(tests/slurm_cluster.py). The end-to-end tests run the real shard (`run --shard K/N --staging DIR`)
and merge (`run --merge DIR`) commands; the machinery tests use a stand-in interpreter that keeps
their contract (scan.json last in DIR/shard-K-of-N/; the merge refuses a missing shard with exit 2)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, query

from chorus_batch.errors import UsageError
from chorus_batch.slurm import (
    follow,
    parse_submitted,
    slurm_script,
    submit,
    submit_and_follow,
)


def _sbatch_line(script: str, name: str) -> str:
    """The sbatch command line of the shard array or the merge job (with its continuation lines)."""
    start = script.index(f"{name}=$(sbatch ")
    return script[start:script.index("<<", start)]


# ----------------------------------------------------------------------------- the script's text
def test_script_has_the_options_given_and_no_others(tmp_path):
    db = tmp_path / "m.sqlite"
    bare = slurm_script(site=str(tmp_path / "site"), db=str(db), shards=4, cpus_per_task=3)
    for name in ("shards_job", "merge_job"):
        line = _sbatch_line(bare, name)
        assert "--cpus-per-task=3" in line and "--parsable" in line and "--export=ALL" in line
        for absent in ("--partition", "--account", "--mem", "--time"):
            assert absent not in line, (absent, line)
    assert "#SBATCH --partition" not in bare and "#SBATCH --account" not in bare
    shards = _sbatch_line(bare, "shards_job")
    assert "--array=0-3" in shards and r'--output="${logs//\%/%%}/%x-%A_%a.out"' in shards
    merge = _sbatch_line(bare, "merge_job")
    assert '--dependency=afterok:"$shards_job"' in merge and "--kill-on-invalid-dep=yes" in merge
    assert '--shard "$SLURM_ARRAY_TASK_ID/4" --staging "$CHORUS_STAGING"' in bare
    assert '--merge "$CHORUS_STAGING"' in bare and "--workers 3" in bare
    assert "set -euo pipefail" in bare
    assert f"staging={shlex.quote(str(db) + '.staging')}/" in bare  # default: beside the manifest, per submission

    full = slurm_script(site=str(tmp_path / "site"), db=str(db), shards=16, cpus_per_task=8, mem="16G",
                        time="04:00:00", partition="batch", account="chorus", staging=str(tmp_path / "st"))
    for name in ("shards_job", "merge_job"):
        line = _sbatch_line(full, name)
        for present in ("--cpus-per-task=8", "--mem=16G", "--time=04:00:00", "--partition=batch", "--account=chorus"):
            assert present in line, (present, line)
    assert "--array=0-15" in full and "#SBATCH --partition=batch" in full and "#SBATCH --account=chorus" in full
    assert f"staging={shlex.quote(str(tmp_path / 'st'))}\n" in full
    for script in (bare, full):
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_script_uses_this_interpreter_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = slurm_script(site="site", db="m.sqlite", shards=2, config="chorus.toml")
    assert f"python={shlex.quote(sys.executable)}\n" in script
    assert f"exec {shlex.quote(sys.executable)} -m chorus_batch run" in script
    for rel in ("site", "m.sqlite", "chorus.toml"):
        assert shlex.quote(str(tmp_path / rel)) in script
    with pytest.raises(UsageError, match="not a manifest in the cloud"):
        slurm_script(site="site", db="az://c/m.sqlite", shards=2)
    with pytest.raises(UsageError, match="memory size"):
        slurm_script(site="site", db="m.sqlite", mem="16 G; rm -rf /")
    with pytest.raises(UsageError, match="partition"):
        slurm_script(site="site", db="m.sqlite", partition="a b")


FAKE_SBATCH = """#!/bin/bash
# Records each submission (arguments, and the job script from stdin) and prints a job id.
n=$(( $(ls "$RECORD" | wc -l) + 100 ))
{ printf '%s\\n' "$@"; echo ---; cat; } > "$RECORD/$n"
echo "$n;cluster"
"""

ARGV_PYTHON = """#!/bin/bash
# Prints its arguments as JSON, one word each: what the job's shell made of the script's quoting.
exec python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_script_quotes_paths_with_spaces_and_quotes(tmp_path):
    """The script run by bash with a recording sbatch: the jobs' commands get every path as one word."""
    record = tmp_path / "record"
    record.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "sbatch", FAKE_SBATCH)
    python = _executable(tmp_path / "my python", ARGV_PYTHON)
    site = tmp_path / "the site's $HOME `x`"
    db = tmp_path / "db dir" / "m one.sqlite"
    staging = tmp_path / "stag ing"
    script = slurm_script(site=str(site), db=str(db), shards=3, cpus_per_task=2, python=str(python),
                          staging=str(staging))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record)}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    job = parse_submitted(proc.stdout)
    assert (job.array_job, job.merge_job, job.shards, job.staging) == ("100", "101", 3, staging)
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700 and job.logs == staging / "logs"
    args100, body100 = (record / "100").read_text().split("---\n")
    args101, body101 = (record / "101").read_text().split("---\n")
    assert f"--output={staging}/logs/%x-%A_%a.out" in args100.splitlines()
    assert "--dependency=afterok:100" in args101.splitlines()
    # Run the jobs' bodies as Slurm would (task 2 of the array), with the stand-in interpreter.
    env_job = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "CHORUS_STAGING": str(staging)}
    shard = subprocess.run(["bash", "-c", body100], env=env_job, capture_output=True, text=True)
    assert json.loads(shard.stdout) == ["-m", "chorus_batch", "run", "--site", str(site), "--db", str(db),
                                        "--workers", "2", "--shard", "2/3", "--staging", str(staging)]
    merge = subprocess.run(["bash", "-c", body101], env=env_job, capture_output=True, text=True)
    assert json.loads(merge.stdout.splitlines()[0])[-2:] == ["--merge", str(staging)]
    assert (staging / "merge.exit").read_text() == "0\n"
    # The rerun commands it prints are shell words too.
    assert shlex.split(job.shard_command(1))[-4:] == ["--shard", "1/3", "--staging", str(staging)]
    assert shlex.split(job.rerun_merge)[:1] == [str(python)]
    # in one style: --staging quoted as --site and --db are (shlex.quote), not bash's printf %q (stag\ ing)
    for line in (job.shard_command(1), job.rerun_merge):
        assert f"--site {shlex.quote(str(site))} --db {shlex.quote(str(db))}" in line, line
        assert line.endswith(f" {shlex.quote(str(staging))}") and "\\" not in line, line


@pytest.mark.parametrize("limit", ["25:99:99", "10:60", "1-24", "1-12:60"])
def test_a_time_limit_out_of_range_is_refused_before_a_script_is_made(tmp_path, limit):
    """--time 25:99:99 had the form of HH:MM:SS and went into the script: sbatch refused it when submitted (tonight,
    from a printed script). Minutes and seconds are below 60, a day's hours below 24 (90, 48:00:00 and 1-23:59 are
    fine)."""
    (tmp_path / "site").mkdir()
    args = ("slurm-script", "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"), "--time")
    bad = cli(*args, limit)
    assert bad.returncode == 2 and f"{limit!r} is not a Slurm time limit" in bad.stderr and "out of range" in bad.stderr
    assert bad.stdout == "" and "Traceback" not in bad.stderr
    for fine in ("90", "48:00:00", "1-23:59", "99:59"):
        out = cli(*args, fine)
        assert out.returncode == 0 and f"--time={fine}" in out.stdout, out.stderr


def test_a_slurm_value_ending_in_a_line_break_is_refused_not_an_internal_error(tmp_path):
    """`$` in the checks' patterns also matched before a final line break: `--mem $'16G\n'` passed its check and was an
    internal error (exit 3) when its MiB were counted; `--partition`, `--account` or `--time` with one went into the
    script, for sbatch to refuse when it was submitted (tonight, from a printed script)."""
    (tmp_path / "site").mkdir()
    args = ("slurm-script", "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"))
    for flag, value, said in (("--mem", "16G\n", "is not a Slurm memory size"),
                              ("--time", "10\n", "is not a Slurm time limit"),
                              ("--partition", "debug\n", "is not a Slurm partition or account name"),
                              ("--account", "lab\n", "is not a Slurm partition or account name")):
        out = cli(*args, flag, value)
        assert out.returncode == 2 and f"{value!r} {said}" in out.stderr, (flag, out.stderr)
        assert out.stdout == "" and "internal error" not in out.stderr


@pytest.mark.parametrize("flag", ["--site", "--db", "--staging", "--config"])
def test_a_path_with_a_line_break_is_refused_not_written_into_the_script(tmp_path, flag):
    """A line break would end the script's comment or a job's here-document: the rest of the path a command."""
    odd = str(tmp_path / "nl\ntouch PWNED #\nCHORUS_SHARD")
    paths = {"--site": str(tmp_path / "site"), "--db": str(tmp_path / "m.sqlite"), flag: odd}
    if flag == "--config":
        Path(odd).parent.mkdir(parents=True, exist_ok=True)
        Path(odd).write_text("[site]\nroot = 'site'\n")
    proc = cli("slurm-script", *[w for item in paths.items() for w in item], cwd=tmp_path)
    assert proc.returncode == 2 and "control character" in proc.stderr and "fix:" in proc.stderr, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("command", [["slurm-script"], ["run", "--slurm"]])
@pytest.mark.parametrize("where", ["--staging", "--db"])
def test_a_staging_folder_with_a_backslash_is_refused_before_a_script_is_made(tmp_path, command, where):
    """sbatch reads the jobs' --output (STAGING/logs/%x-%A_%a.out) as a pattern, and a backslash anywhere in it turns
    every replacement off: on slurm 22.05 each task of a staging folder "st a\\b" failed at once without a log, the
    merge never ran, and the follower named logs that were never written. Refused up front (also the default staging
    folder beside a manifest in such a folder), saying what to give instead."""
    (tmp_path / "site").mkdir()
    odd = tmp_path / "st a\\b"
    db = odd / "m.sqlite" if where == "--db" else tmp_path / "m.sqlite"
    extra = ["--staging", str(odd)] if where == "--staging" else []
    proc = cli(*command, "--site", str(tmp_path / "site"), "--db", str(db), *extra, cwd=tmp_path)
    assert proc.returncode == 2 and "holds a backslash" in proc.stderr and "give --staging a folder" in proc.stderr, \
        proc.stderr
    assert proc.stdout == "" and not odd.exists()
    db.parent.mkdir(exist_ok=True)  # (a manifest's folder that is not there is refused too)
    fine = cli(*command[:1], "--site", str(tmp_path / "site"), "--db", str(db), "--staging", str(tmp_path / "st"),
               cwd=tmp_path) if command == ["slurm-script"] else None
    assert fine is None or fine.returncode == 0, fine.stderr


def test_slurm_script_command(tmp_path):
    (tmp_path / "site").mkdir()
    proc = cli("slurm-script", "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"), "--shards", "16",
               "--partition", "batch")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash\n") and "--array=0-15" in proc.stdout and "--partition=batch" in proc.stdout
    assert "sbatch nightly.sbatch" in cli("slurm-script", "--help").stdout
    bad = cli("slurm-script", "--site", "s", "--db", "m.sqlite", "--mem", "lots")
    assert bad.returncode == 2 and "memory size" in bad.stderr
    nosite = cli("slurm-script", "--db", "m.sqlite", cwd=tmp_path)
    assert nosite.returncode == 2 and "needs the site" in nosite.stderr
    assert "--slurm" in cli("run", "--help").stdout


@pytest.mark.parametrize("command", [["slurm-script"], ["run", "--slurm"]])
def test_a_site_that_is_not_there_is_refused_before_a_script_is_made(tmp_path, command):
    """A missing local root would fail every shard of the night: refused up front (exit 2), no script printed,
    nothing submitted; [site.roots] roots alike."""
    missing = cli(*command, "--site", str(tmp_path / "nowhere"), "--db", str(tmp_path / "m.sqlite"), cwd=tmp_path)
    assert missing.returncode == 2 and "not a readable directory" in missing.stderr, missing.stderr
    assert str(tmp_path / "nowhere") in missing.stderr and missing.stdout == ""
    (tmp_path / "chorus.toml").write_text(f"[site.roots]\nImages = '{tmp_path / 'no-images'}'\n")
    (tmp_path / "site" / "OMOP").mkdir(parents=True)  # (beside the manifest: one inside the site root is refused)
    roots = cli(*command, "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"), cwd=tmp_path)
    assert roots.returncode == 2 and "[site.roots] Images" in roots.stderr and roots.stdout == "", roots.stderr
    assert not (tmp_path / "m.sqlite.staging").exists()


@pytest.mark.parametrize("command", [["slurm-script"], ["run", "--slurm"]])
def test_what_every_shard_would_refuse_is_refused_before_a_script_is_made(tmp_path, command):
    """A manifest in the cloud (each shard refuses it), a --db that is a folder or lies under a file, a staging URL,
    a chorus.toml with [site.roots] but no site root: each array task failed hours later; now exit 2 at once, naming
    the option and what it needs, no script printed, nothing submitted."""
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "folder.sqlite").mkdir()
    (tmp_path / "a-file").write_text("x")
    for args, said in (
        (["--db", "az://container/m.sqlite", "--staging", str(tmp_path / "st")], "not a manifest in the cloud"),
        (["--db", str(tmp_path / "folder.sqlite")], "--db names a folder"),
        (["--db", str(tmp_path / "a-file" / "m.sqlite")], "a-file is a file, not a folder"),
        (["--db", str(tmp_path / "m.sqlite"), "--staging", "s3://bucket/staging?X-Amz-Signature=SECRET"],
         "--staging s3://bucket/staging?X-Amz-Signature=*** is a URL"),
    ):
        proc = cli(*command, "--site", str(site), *args, cwd=tmp_path, env={"PATH": str(tmp_path / "nothing")})
        assert proc.returncode == 2 and said in proc.stderr and "fix:" in proc.stderr, (args, proc.stderr)
        assert proc.stdout == "" and "SECRET" not in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "chorus.toml").write_text(f"[site.roots]\nWaveforms = '{site}'\n")
    proc = cli(*command, "--db", str(tmp_path / "m.sqlite"), cwd=tmp_path)
    assert proc.returncode == 2 and "needs the site root ([site.roots] adds" in proc.stderr, proc.stderr
    assert proc.stdout == "" and not (tmp_path / "m.sqlite.staging").exists()


@pytest.mark.parametrize("command", ["slurm-script", "run --slurm"])
def test_a_config_in_append_mode_is_refused_before_a_script_is_made(tmp_path, command):
    """[run] mode = "append" in the jobs' chorus.toml: the script was made and every shard refused append mode
    tonight ("drop those options", of an option never given). Refused now, with what to do."""
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "chorus.toml").write_text(f"[site]\nroot = '{site}'\n[run]\nmode = 'append'\n")
    proc = cli(*command.split(), "--config", str(tmp_path / "chorus.toml"), "--db", str(tmp_path / "m.sqlite"),
               cwd=tmp_path, env={"PATH": str(tmp_path / "nothing")})
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert '[run] mode = "append"' in proc.stderr and "every shard would refuse append mode" in proc.stderr
    assert "run append deliveries on one node" in proc.stderr and not (tmp_path / "m.sqlite.staging").exists()


def test_run_slurm_says_where_each_flag_it_does_not_pass_on_goes(tmp_path):
    """`run --slurm --dry-run` (or --version, --workers) was told "set them in chorus.toml", which has no such
    setting (and the jobs' --workers is --cpus-per-task): each flag is now told where it goes."""
    site = tmp_path / "site"
    site.mkdir()
    base = ["run", "--slurm", "--site", str(site), "--db", str(tmp_path / "m.sqlite")]
    for flags, said, unsaid in (
        (["--dry-run"], "--dry-run: `chorus-batch status`", "chorus.toml"),
        (["--version", "X", "--rehash"], "--version: the merge's alone", "chorus.toml"),
        (["--workers", "2"], "--workers: --cpus-per-task C is each job's --workers", "chorus.toml"),
        (["--mode", "append"], "--mode: a Slurm run is a full run", "chorus.toml"),
        (["--exclude", "*.tmp", "--no-validate"], "set --no-validate, --exclude in chorus.toml as [run] validate = "
                                                  "false, [run] exclude and pass --config", "alone"),
    ):
        proc = cli(*base, *flags, cwd=tmp_path)
        assert proc.returncode == 2 and said in proc.stderr and unsaid not in proc.stderr, (flags, proc.stderr)


@pytest.mark.parametrize("command", ["slurm-script", "run --slurm"])
def test_a_config_read_from_a_pipe_is_refused_before_a_script_is_made(tmp_path, command):
    """`--config <(envsubst < chorus.toml.in)` put /dev/fd/63 into the script: every job, started later on another
    node, failed on a config that was not there. Refused at once (exit 2), no script, nothing submitted; the same
    config written to a file makes the script."""
    site = tmp_path / "site"
    (site / "OMOP").mkdir(parents=True)
    template = tmp_path / "chorus.toml.in"
    template.write_text(f"[site]\nroot = '{site}'\n[manifest]\ndb = '{tmp_path / 'm.sqlite'}'\n")
    line = f"{shlex.quote(sys.executable)} -m chorus_batch {command} --config <(cat {shlex.quote(str(template))})"
    proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PATH": str(tmp_path / "nothing") + ":/usr/bin:/bin"})
    assert proc.returncode == 2 and "is no file (a pipe" in proc.stderr and "where: --config" in proc.stderr, proc.stderr
    assert proc.stdout == "" and not (tmp_path / "m.sqlite.staging").exists()
    if command == "slurm-script":
        written = tmp_path / "chorus.toml"
        written.write_text(template.read_text())
        made = cli("slurm-script", "--config", str(written), cwd=tmp_path)
        assert made.returncode == 0 and f"--config {written}" in made.stdout, made.stderr


def test_the_script_upgrades_an_older_manifest_before_it_submits(tmp_path):
    """The shards open the manifest read-only and cannot migrate it: every array task failed on a manifest an older
    release wrote. The script upgrades it once, before its first sbatch; one it cannot open is not submitted."""
    from chorus_batch.store.schema import SCHEMA_VERSION

    record, bin_dir = tmp_path / "record", tmp_path / "bin"
    record.mkdir()
    bin_dir.mkdir()
    _executable(bin_dir / "sbatch", FAKE_SBATCH)
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    site.mkdir()
    shutil.copy(Path(__file__).resolve().parent / "fixtures" / "schema2" / "manifest.sqlite", db)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record)}
    made = cli("slurm-script", "--site", str(site), "--db", str(db), "--shards", "2", "--staging", str(tmp_path / "st"))
    assert made.returncode == 0, made.stderr
    proc = subprocess.run(["bash", "-c", made.stdout], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert f"upgraded the manifest {db} from schema 2 to {SCHEMA_VERSION}" in proc.stderr, proc.stderr
    assert sorted(p.name for p in record.iterdir()) == ["100", "101"]
    shard = cli("run", "--site", str(site), "--db", str(db), "--shard", "0/2", "--staging", str(tmp_path / "st"))
    assert shard.returncode == 0, shard.stderr
    # A manifest the upgrade refuses (here: not a SQLite file any more): the script stops before any sbatch.
    db.write_text("not a manifest")
    proc = subprocess.run(["bash", "-c", made.stdout], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "nothing was submitted" in proc.stderr, proc.stderr
    assert sorted(p.name for p in record.iterdir()) == ["100", "101"]


def test_run_slurm_without_sbatch_says_so(tmp_path):
    site = tmp_path / "site"  # (beside the manifest: one inside the site root is refused)
    site.mkdir()
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(tmp_path / "m.sqlite"),
               env={"PATH": str(tmp_path / "nothing")})
    assert proc.returncode == 2
    assert "Slurm's sbatch is not on PATH: run on a login node of the cluster or install slurm-wlm" in proc.stderr
    proc = cli("run", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--shards", "4")
    assert proc.returncode == 2 and "--shards goes only with --slurm" in proc.stderr
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--dry-run")
    assert proc.returncode == 2 and "--dry-run" in proc.stderr and "chorus-batch status" in proc.stderr


def test_run_slurm_where_sbatch_reaches_no_cluster_says_so(tmp_path):
    """The real sbatch on a machine whose slurm.conf names a controller that is not there (or that has none): it
    said "sbatch refused the shards' job array" and sent the user to change --partition, --account, --mem, ...;
    nothing about the jobs is wrong: it says that this machine reaches no Slurm cluster, and where to run instead."""
    assert shutil.which("sbatch"), "Slurm's sbatch is not installed: run scripts/test (it installs slurm-wlm)"
    site = tmp_path / "site"
    site.mkdir()
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=nohost.invalid\n")
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--shards", "2",
               env={"SLURM_CONF": str(conf)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    # said by the script's first Slurm command, squeue (its 10 s of retries), not after sbatch's 10 s more
    assert "squeue reaches no Slurm cluster from this machine: squeue: error:" in proc.stderr, proc.stderr
    assert "run on a login node of the cluster" in proc.stderr and "--partition" not in proc.stderr
    assert "nothing was submitted and nothing was committed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.sqlite").exists()
    # the submission's staging folder, left empty, went, and the folder of submissions made for it (an empty
    # m.sqlite.staging/ stayed beside the manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "slurm.conf"]


# ----------------------------------------------------------------------------- the real cluster
def test_cluster_runs_a_job(slurm, tmp_path):
    out = tmp_path / "hi.out"
    proc = slurm.run(["sbatch", "--parsable", f"--output={out}", "--wrap", "echo hi"], check=True)
    job = proc.stdout.strip().split(";")[0]
    assert slurm.wait_job(job, timeout=60) == "COMPLETED"
    assert out.read_text().strip() == "hi"
    assert any(row["id"] == job and row["state"] == "COMPLETED" for row in slurm.squeue())


def test_the_followers_squeue_sees_its_jobs_whatever_squeue_variables_the_user_set(slurm, tmp_path, monkeypatch):
    """SQUEUE_NAMES, SQUEUE_PARTITION or SQUEUE_ACCOUNT in a user's shell profile filter squeue's answer, and its
    command-line options do not override them: the follower's jobs were left out of it, as if they had finished."""
    from chorus_batch.slurm import scontrol_exit, squeue_states

    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    proc = slurm.run(["sbatch", "--parsable", f"--output={tmp_path / 'sleep.out'}", "--wrap", "sleep 30"], check=True)
    job = proc.stdout.strip().split(";")[0]
    try:
        monkeypatch.setenv("SQUEUE_NAMES", "no-job-is-named-so")
        monkeypatch.setenv("SQUEUE_PARTITION", "no-such-partition")
        assert job in squeue_states([job]), "the job was filtered out by the user's SQUEUE_* variables"
        assert scontrol_exit(job)[0] in {"PENDING", "RUNNING", "CONFIGURING"}
    finally:
        slurm.run(["scancel", job])


def test_a_squeue_that_never_answers_counts_as_failed_not_as_a_hang(tmp_path, monkeypatch):
    """A controller that takes connections and never answers hung the follower's squeue, and `run --slurm` with it,
    with no word; it is given up on after QUERY_TIMEOUT_S and said as squeue failing (the follower asks again)."""
    import chorus_batch.slurm as slurm_module

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("squeue", "scontrol"):  # (a stand-in for a controller that never answers: exec sleep)
        _executable(bin_dir / tool, "#!/bin/sh\nexec sleep 60\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm_module, "QUERY_TIMEOUT_S", 1)
    started = time.monotonic()
    assert slurm_module.squeue_states(["7", "8"]) is None
    assert slurm_module.scontrol_exit("8") == ("", None)
    assert time.monotonic() - started < 20


STAND_IN = """#!/bin/bash
# A stand-in for `python -m chorus_batch run` keeping the shard/merge contract.
args=("$@"); shard=""; staging=""; merge=""
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --shard) shard=${args[i+1]} ;;
        --staging) staging=${args[i+1]} ;;
        --merge) merge=${args[i+1]} ;;
    esac
done
echo "stand-in: $*" >> "$STAND_IN_LOG"
if [ -n "$shard" ]; then
    k=${shard%/*}; n=${shard#*/}
    [ "$k" = "${STAND_IN_FAIL:-}" ] && { echo "shard $k fails on purpose" >&2; exit 3; }
    [ -n "${STAND_IN_HANG:-}" ] && exec sleep 600
    mkdir -p "$staging/shard-$k-of-$n"
    echo '{}' > "$staging/shard-$k-of-$n/scan.json"
    exit 0
fi
n=$(ls -d "$merge"/shard-*-of-* | head -1 | sed 's/.*-of-//')
for ((k = 0; k < n; k++)); do
    [ -f "$merge/shard-$k-of-$n/scan.json" ] || { echo "shard $k of $n is missing" >&2; exit 2; }
done
echo "merged $n shards"
exit "${STAND_IN_MERGE_EXIT:-0}"
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch, slurm):
    python = _executable(tmp_path / "stand in python", STAND_IN)
    log = tmp_path / "stand-in.log"
    for key, value in {**slurm.env, "STAND_IN_LOG": str(log)}.items():
        monkeypatch.setenv(key, value)
    return python, log


def test_follow_returns_the_merges_exit_code(slurm, stand_in, tmp_path, monkeypatch):
    python, log = stand_in
    monkeypatch.setenv("STAND_IN_MERGE_EXIT", "1")
    script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=3, cpus_per_task=1,
                          python=str(python), staging=str(tmp_path / "st"))
    lines: list[str] = []
    assert submit_and_follow(script, poll_s=0.3, out=lines.append) == 1
    text = "\n".join(lines)
    assert re.search(r"shards \d+: 0 pending, 0 running, 3 done, 0 failed of 3; merge \d+: completed", text) or \
        re.search(r"3 done, 0 failed of 3; merge \d+: (failed|gone)", text), text
    assert "exited with code 1" in text
    calls = log.read_text().splitlines()
    assert len(calls) == 4 and "--merge" in calls[-1]  # the merge ran last, after the three shards
    job = parse_submitted("\n".join(lines))
    assert all((job.logs / f"chorus-shard-{job.array_job}_{k}.out").exists() for k in range(3))
    slurm.wait_idle()


def test_a_staging_folder_with_a_percent_sign_gets_its_logs(slurm, stand_in, tmp_path, monkeypatch):
    """sbatch reads % in --output as a pattern even in the folder's name: a staging folder "st 100%j" sent the
    jobs' output to "st 100<job id>/logs/...", a folder that is not there, so the logs the follower names were never
    written. The script writes a literal % as %%."""
    python, _log = stand_in
    staging = tmp_path / "st 100%j"
    script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=2, cpus_per_task=1,
                          python=str(python), staging=str(staging))
    lines: list[str] = []
    assert submit_and_follow(script, poll_s=0.3, out=lines.append) == 0, lines
    job = parse_submitted("\n".join(lines))
    assert job.logs == staging / "logs"
    assert all(job.shard_log(k).exists() for k in range(2)) and job.merge_log().exists(), list(tmp_path.rglob("*"))
    slurm.wait_idle()


def test_a_failed_shard_cancels_the_merge_and_is_named(slurm, stand_in, tmp_path, monkeypatch):
    python, log = stand_in
    monkeypatch.setenv("STAND_IN_FAIL", "1")
    script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=3, cpus_per_task=1,
                          python=str(python), staging=str(tmp_path / "st"))
    lines: list[str] = []
    assert submit_and_follow(script, poll_s=0.3, out=lines.append) == 2
    text = "\n".join(lines)
    assert "did not run: 1 of 3 shards did not finish" in text and "shard 1 of 3: failed" in text
    rerun = next(line for line in lines if "rerun it:" in line).split("rerun it: ", 1)[1]
    assert shlex.split(rerun)[0] == str(python) and "--shard 1/3" in rerun
    assert "--merge" not in log.read_text()
    # Rerun the shard alone, then the merge, as the report says.
    monkeypatch.delenv("STAND_IN_FAIL")
    assert subprocess.run(["bash", "-c", rerun]).returncode == 0
    merge = next(line for line in lines if "then merge:" in line).split("then merge: ", 1)[1]
    assert subprocess.run(["bash", "-c", merge], capture_output=True, text=True).stdout == "merged 3 shards\n"
    slurm.wait_idle()


def test_jobs_slurm_will_never_start_are_cancelled_and_said(slurm, stand_in, tmp_path):
    """More --cpus-per-task than the nodes have: sbatch accepts the array, and Slurm keeps its tasks pending for
    PartitionConfig for ever. The follower said "3 pending of 3" every few seconds, a nightly `run --slurm` never
    ended and no one was told why. It now cancels the jobs, says why Slurm holds them and what to change (exit 2)."""
    python, log = stand_in
    script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=3,
                          cpus_per_task=slurm.cpus * 2, python=str(python), staging=str(tmp_path / "st"))
    lines: list[str] = []
    assert submit_and_follow(script, poll_s=0.3, out=lines.append) == 2
    text = "\n".join(lines)
    assert "pending (PartitionConfig)" in text, text
    assert "will not start these jobs" in text and "shard 0 (task" in text and "--cpus-per-task" in text, text
    job = parse_submitted(text)
    assert f"cancelled the shards' job array {job.array_job} and the merge job {job.merge_job}" in text
    assert "nothing was committed" in text and not log.exists()  # no shard and no merge ran
    slurm.wait_idle()  # (cancelled: nothing is left queued)


def test_a_staging_folder_used_before_does_not_pass_off_its_old_shards_as_done(slurm, stand_in, tmp_path,
                                                                                 monkeypatch):
    """A --staging used by an earlier submission kept its complete shards: a task of the next one that failed before
    it began its shard (here the stand-in's exit 3; a node without the interpreter) left last night's shard looking
    done, so the follower said "0 of 3 shards did not finish", named none, and sent the user to a merge that took the
    old shard. The script removes the old shards' completion records; the follower goes by the tasks' states."""
    python, _log = stand_in
    script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=3, cpus_per_task=1,
                          python=str(python), staging=str(tmp_path / "st"))
    assert submit_and_follow(script, poll_s=0.3, out=lambda line: None) == 0
    monkeypatch.setenv("STAND_IN_FAIL", "1")
    lines: list[str] = []
    assert submit_and_follow(script, poll_s=0.3, out=lines.append) == 2
    text = "\n".join(lines)
    assert "did not run: 1 of 3 shards did not finish" in text and "shard 1 of 3: failed" in text, text
    assert not (tmp_path / "st" / "shard-1-of-3" / "scan.json").exists()
    merge = next(line for line in lines if "then merge:" in line).split("then merge: ", 1)[1]
    merged = subprocess.run(["bash", "-c", merge], capture_output=True, text=True)
    assert merged.returncode == 2 and "shard 1 of 3 is missing" in merged.stderr, merged.stdout + merged.stderr
    slurm.wait_idle()


_FOLLOWED_JOB = ("staging: {0}\nlogs: {0}/logs\nshards: job array 7 (2 tasks)\nmerge: job 8, after\n"
                 "rerun a shard: py -m chorus_batch run --shard K/2 --staging st\n"
                 "rerun the merge: py -m chorus_batch run --merge st\n")


def _followed(tmp_path: Path, monkeypatch, states: dict) -> str:
    """What `follow` says of job array 7 (2 tasks) and merge job 8 whose squeue states are `states` (scontrol knows
    neither); its exit code must be 2."""
    import chorus_batch.slurm as slurm_module

    monkeypatch.setattr(slurm_module, "squeue_states", lambda ids: states)
    monkeypatch.setattr(slurm_module, "scontrol_exit", lambda job_id: ("", None))
    lines: list[str] = []
    assert follow(parse_submitted(_FOLLOWED_JOB.format(tmp_path)), poll_s=0, out=lines.append, exit_wait_s=0) == 2
    return "\n".join(lines)


def test_follow_says_what_the_merge_said_of_its_outcome(tmp_path, monkeypatch):
    """A merge refused (stale shards: a plain run committed a newer version while the merge waited; the manifest locked)
    was said by `run --slurm` as "merge job 8 exited with code 2 (log ...)" alone: what happened and what to run next
    were in the log only. The follower repeats the merge's error with its where and fix, or the version it committed."""
    import chorus_batch.slurm as slurm_module

    states = {"7_0": ("COMPLETED", "None"), "7_1": ("COMPLETED", "None"), "8": ("FAILED", "NonZeroExitCode")}
    monkeypatch.setattr(slurm_module, "squeue_states", lambda ids: states)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "chorus-merge-8.out"
    (tmp_path / "merge.exit").write_text("2\n")
    log.write_text("2026-12-07T02:17:40+0000 chorus-batch: merging the shards in st\n"
                   "chorus-batch: error: the shards in st are older than the manifest's latest version 2; nothing was "
                   "committed\n  where: st\n  fix:   submit the Slurm script again\nrun took 1 s\n")
    lines: list[str] = []
    assert follow(parse_submitted(_FOLLOWED_JOB.format(tmp_path)), poll_s=0, out=lines.append, exit_wait_s=0) == 2
    text = "\n".join(lines)
    assert f"merge job 8 exited with code 2 (log {log}):\n  chorus-batch: error: the shards in st are older" in text, text
    assert "\n    where: st\n    fix:   submit the Slurm script again" in text and "run took" not in text, text

    states["8"] = ("COMPLETED", "None")
    (tmp_path / "merge.exit").write_text("0\n")
    log.write_text("version 20261207021736 committed to /data/m.sqlite\n\nmodality   added\n")
    lines.clear()
    assert follow(parse_submitted(_FOLLOWED_JOB.format(tmp_path)), poll_s=0, out=lines.append, exit_wait_s=0) == 0
    assert lines[-1] == "  version 20261207021736 committed to /data/m.sqlite", lines


def test_follow_names_a_shard_whose_task_failed_after_writing_it(tmp_path, monkeypatch):
    """A task can fail after its shard's scan.json is written (killed at its time limit while it printed its
    summary): the merge is cancelled all the same, and the follower named no shard ("0 of 2 did not finish")."""
    for k in range(2):
        (tmp_path / f"shard-{k}-of-2").mkdir()
        (tmp_path / f"shard-{k}-of-2" / "scan.json").write_text("{}")
    text = _followed(tmp_path, monkeypatch, {"7_0": ("COMPLETED", "None"), "7_1": ("TIMEOUT", "TimeLimit"),
                                             "8": ("CANCELLED", "DependencyNeverSatisfied")})
    assert "1 done, 1 failed of 2" in text and "did not run: 1 of 2 shards did not finish" in text, text
    assert "shard 1 of 2: timeout" in text and "--shard 1/2 " in text, text


def test_a_merge_slurm_stopped_at_its_time_limit_or_memory_is_said_with_what_to_run(tmp_path, monkeypatch):
    """A merge stopped at its --time (Slurm's SIGTERM: its shell writes 143 to merge.exit) was said "merge job 8 exited
    with code 143 (log ...)" and no more, though a shard stopped so is told "a longer --time". It says Slurm stopped it,
    that the shards are done, and the merge alone to run in a job with a longer --time (or a larger --mem, when a
    cgroup's OOM kill took the job's shell with it and merge.exit was never written)."""
    import chorus_batch.slurm as slurm_module

    states = {"7_0": ("COMPLETED", "None"), "7_1": ("COMPLETED", "None"), "8": ("TIMEOUT", "TimeLimit")}
    monkeypatch.setattr(slurm_module, "squeue_states", lambda ids: states)
    monkeypatch.setattr(slurm_module, "scontrol_exit", lambda job_id: ("", None))
    (tmp_path / "logs").mkdir()
    (tmp_path / "merge.exit").write_text("143\n")
    log = tmp_path / "logs" / "chorus-merge-8.out"
    log.write_text("chorus-batch: merging the shards in st\nchorus-batch: terminated (SIGTERM); nothing was committed\n")
    lines: list[str] = []
    assert follow(parse_submitted(_FOLLOWED_JOB.format(tmp_path)), poll_s=0, out=lines.append, exit_wait_s=0) == 143
    assert lines[-3:-1] == [f"merge job 8 exited with code 143 (log {log}):",
                            "  chorus-batch: terminated (SIGTERM); nothing was committed"], lines
    assert lines[-1] == (f"Slurm stopped the merge job 8 at its time limit (TIMEOUT): the shards are done and stay in "
                         f"{tmp_path}; merge them alone, in a job with a longer --time: py -m chorus_batch run --merge "
                         "st (submitting again would hash every shard again)"), lines

    # stopped after its commit: the version stays, nothing to merge again
    log.write_text("chorus-batch: terminated (SIGTERM); version 20261207021736 had been committed before; it stays\n")
    lines.clear()
    assert follow(parse_submitted(_FOLLOWED_JOB.format(tmp_path)), poll_s=0, out=lines.append, exit_wait_s=0) == 143
    assert lines[-1] == ("Slurm stopped the merge job 8 at its time limit (TIMEOUT) after it had committed its version, "
                         "which stays; give the next submission a longer --time"), lines

    states["8"] = ("OUT_OF_MEMORY", "OutOfMemory")
    (tmp_path / "merge.exit").unlink()
    log.unlink()
    lines.clear()
    assert follow(parse_submitted(_FOLLOWED_JOB.format(tmp_path)), poll_s=0, out=lines.append, exit_wait_s=0) == 3
    assert "the merge job 8 ended out_of_memory without writing" in lines[-2], lines
    assert lines[-1].startswith("Slurm stopped the merge job 8 over its memory (OUT_OF_MEMORY): the shards are done"), lines
    assert "in a job with a larger --mem: py -m chorus_batch run --merge st (" in lines[-1], lines

    states["8"] = ("FAILED", "NonZeroExitCode")  # killed by another (a SIGKILL of its own): no such advice
    (tmp_path / "merge.exit").write_text("137\n")
    lines.clear()
    assert follow(parse_submitted(_FOLLOWED_JOB.format(tmp_path)), poll_s=0, out=lines.append, exit_wait_s=0) == 137
    assert not any("Slurm stopped" in line for line in lines), lines


def test_a_shard_slurm_stopped_over_its_memory_is_said_with_the_memory_to_give(tmp_path, monkeypatch):
    """A shard's task over its --mem (Slurm's OUT_OF_MEMORY; the test cluster enforces no memory, so its state as
    squeue reports it): named, with what to submit instead and the command that reruns it alone."""
    text = _followed(tmp_path, monkeypatch, {"7_0": ("COMPLETED", "None"), "7_1": ("OUT_OF_MEMORY", "OutOfMemory"),
                                             "8": ("CANCELLED", "DependencyNeverSatisfied")})
    assert "1 done, 1 failed of 2" in text and "did not run: 1 of 2 shards did not finish; nothing was committed" in text
    assert ("  shard 1 of 2: out_of_memory (Slurm stopped it over its memory: submit again with a larger --mem, or fewer "
            f"--cpus-per-task (each task's --workers)); log {tmp_path}/logs/chorus-shard-7_1.out\n"
            "    rerun it: py -m chorus_batch run --shard 1/2 --staging st\n"
            "  then merge: py -m chorus_batch run --merge st") in text, text


def test_follow_does_not_tell_to_rerun_a_shard_whose_task_still_runs(tmp_path, monkeypatch):
    """Shard 0 failed, so the merge was cancelled, while shard 1's task still ran: the follower said "rerun it" of
    shard 1 too, a rerun its own running task's lock refuses (or that hashes the shard twice)."""
    text = _followed(tmp_path, monkeypatch, {"7_0": ("FAILED", "NonZeroExitCode"), "7_1": ("RUNNING", "None"),
                                             "8": ("CANCELLED", "DependencyNeverSatisfied")})
    assert "2 of 2 shards did not finish (1 still queued or running)" in text, text
    assert "shard 1 of 2: running (task 7_1, still in Slurm's queue" in text and "--shard 1/2 " not in text, text
    assert "shard 0 of 2: failed" in text and "--shard 0/2 " in text, text


def test_a_submission_cancelled_whole_is_said_cancelled_not_failed(tmp_path, monkeypatch):
    """`scancel <array> <merge>` of the whole submission while `run --slurm` followed it (measured on slurm 22.05: the
    tasks CANCELLED, the merge CANCELLED with reason "Dependency"): the follower said "did not finish" and a rerun by
    hand for every shard, as if they had failed. It says they were cancelled, none failed, and to submit again."""
    states = {"7_0": ("CANCELLED", "None"), "7_1": ("CANCELLED", "None"), "8": ("CANCELLED", "Dependency")}
    text = _followed(tmp_path, monkeypatch, states)
    assert "did not run: 2 of 2 shards did not finish (cancelled, by scancel or an administrator: none failed)" in text
    assert "nothing was committed; to hash the whole site again, submit again" in text, text
    # one shard cancelled, the other done: its rerun and the merge are the way on, not a new submission
    states["7_0"] = ("COMPLETED", "None")
    text = _followed(tmp_path, monkeypatch, states)
    assert "1 of 2 shards did not finish (cancelled, by scancel or an administrator: none failed)" in text, text
    assert "submit again" not in text and "--shard 1/2 " in text and "then merge: py" in text, text
    # a shard that failed beside a cancelled one: not said "none failed"
    states["7_0"] = ("FAILED", "NonZeroExitCode")
    text = _followed(tmp_path, monkeypatch, states)
    assert "none failed" not in text and "shard 0 of 2: failed" in text, text


def test_a_merge_cancelled_by_hand_while_the_shards_run_is_said_as_such(tmp_path, monkeypatch):
    """`scancel <merge>` while the shards still ran (the merge pending on its dependency, squeue's reason "Dependency"):
    the follower said "the merge job did not run: 2 of 2 shards did not finish", as if they had failed, and nothing of
    the array left running. It says that the merge was cancelled with no shard failed, and the array's scancel. A merge
    cancelled before it ran once every shard was done was sent to "its log", which it never wrote."""
    states = {"7_0": ("RUNNING", "None"), "7_1": ("PENDING", "Resources"), "8": ("CANCELLED", "Dependency")}
    text = _followed(tmp_path, monkeypatch, states)
    assert "merge job 8 was cancelled before it ran (by scancel or an administrator: no shard failed)" in text, text
    assert "job array 7 still has 2 of 2 tasks queued or running" in text and "`scancel 7`" in text, text
    assert "did not finish" not in text and "rerun it:" not in text and "then merge: py" in text, text

    states.update({"7_0": ("COMPLETED", "None"), "7_1": ("COMPLETED", "None")})  # cancelled once all were done
    text = _followed(tmp_path, monkeypatch, states)
    assert "was cancelled before it ran" in text and "still has" not in text and "see its log" not in text, text
    assert "then merge: py -m chorus_batch run --merge st" in text, text


def test_ctrl_c_with_the_cluster_down_does_not_say_the_jobs_were_cancelled(tmp_path, monkeypatch):
    """Ctrl-C while the controller was down (restarting, a network cut): the real scancel failed (after its retries;
    with a controller it cannot resolve, with exit code 0), and `run --slurm` said "cancelled the shards' job array
    ... nothing was committed", while the jobs stayed queued and ran, merge and all, once the controller was back. It
    says that they could not be cancelled, may still commit, and the scancel to run once the cluster answers."""
    import chorus_batch.slurm as slurm_module

    conf = tmp_path / "slurm.conf"  # a controller that refuses connections, with short timeouts (no 9 s of retries)
    conf.write_text("ClusterName=down\nSlurmctldHost=localhost\nSlurmctldPort=1\nMessageTimeout=1\nTCPTimeout=1\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    job = parse_submitted("staging: {0}\nlogs: {0}/logs\nshards: job array 7 (2 tasks)\nmerge: job 8, after\n"
                          .format(tmp_path))
    monkeypatch.setattr(slurm_module, "submit", lambda script, **_kw: job)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(slurm_module, "follow", interrupted)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt) as caught:
        submit_and_follow("", out=lines.append)
    outcome = caught.value.outcome
    assert outcome.startswith("could not cancel the shards' job array 7 and the merge job 8 (scancel: "), outcome
    assert "Unable to contact slurm controller" in outcome and "`scancel 7 8`" in outcome, outcome
    assert "nothing was committed" not in outcome and not any("cancelled the" in line for line in lines), lines


def test_a_follower_whose_squeue_keeps_failing_says_so_while_it_waits(tmp_path, monkeypatch):
    """The controller down mid-follow (a restart, a network cut): "squeue failed; trying again", then nothing for as
    long as it stayed down, as if `run --slurm` had hung. It says so again at intervals, and when squeue answers."""
    import chorus_batch.slurm as slurm_module

    answers = iter([None, None, None, {"7_0": ("COMPLETED", "None"), "7_1": ("COMPLETED", "None"),
                                       "8": ("COMPLETED", "None")}])
    monkeypatch.setattr(slurm_module, "squeue_states", lambda ids: next(answers))
    monkeypatch.setattr(slurm_module, "SQUEUE_DOWN_SAY_S", 0)
    (tmp_path / "merge.exit").write_text("0\n")
    lines: list[str] = []
    assert follow(parse_submitted(_FOLLOWED_JOB.format(tmp_path)), poll_s=0, out=lines.append, exit_wait_s=0) == 0
    assert lines[0] == "squeue failed; trying again", lines
    assert lines[1].startswith("squeue has failed for 0 min (the cluster's controller does not answer): still "
                               "trying") and "`scancel 7 8`" in lines[1], lines
    assert lines[3].startswith("squeue answers again after") and "2 done" in lines[4], lines


def test_a_node_without_the_interpreter_says_so_in_the_jobs_log(slurm, stand_in, tmp_path):
    """The jobs run the interpreter that made the script; on a node without it (a venv on the login node's own disk)
    the shard's log said only bash's "line 3: ...: No such file or directory". Each job checks it first and says
    what it is and what to do. (Here the interpreter goes after the submission, while the blocked shards wait.)"""
    python, _log = stand_in
    link = tmp_path / "venv" / "bin" / "python"
    link.parent.mkdir(parents=True)
    link.symlink_to(python)
    blocker = slurm.run(["sbatch", "--parsable", f"--cpus-per-task={slurm.cpus}", "--output=/dev/null", "--wrap",
                         "sleep 120"], check=True).stdout.strip().split(";")[0]
    try:
        job = submit(slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=2,
                                  cpus_per_task=1, python=str(link), staging=str(tmp_path / "st")))
        link.unlink()
    finally:
        slurm.run(["scancel", blocker])
    lines: list[str] = []
    assert follow(job, poll_s=0.3, out=lines.append) == 2
    assert "shard 0 of 2: failed" in "\n".join(lines), lines
    said = job.shard_log(0).read_text()
    assert f"the interpreter {link} is not on {slurm.hostname}" in said and "every node reaches" in said, said
    slurm.wait_idle()


@pytest.mark.parametrize("limit, header", [("5", "5"), ("0:9:30", "0:9:30"), ("0-0:05", "0-0:05"),
                                           ("04:00:00", "00:10:00"), ("0", "00:10:00"), ("UNLIMITED", "00:10:00")])
def test_the_submitting_job_asks_no_more_time_than_the_jobs(tmp_path, limit, header):
    script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), time=limit)
    assert re.findall(r"^#SBATCH --time=(.*)$", script, re.MULTILINE) == [header]


def test_sbatch_the_script_on_a_partition_with_a_short_time_limit(slurm, stand_in, tmp_path):
    """The submitting job asked for 10 minutes whatever --time said: on a partition whose MaxTime is shorter (the
    jobs' --time fitting it) `sbatch nightly.sbatch` stayed pending for ever (PartitionTimeLimit), submitting nothing.
    It asks for the jobs' --time when that is shorter."""
    python, _log = stand_in
    assert slurm.run(["scontrol", "create", "PartitionName=short", "Nodes=ALL", "MaxTime=5", "State=UP"]).returncode == 0
    try:
        script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=2, cpus_per_task=1,
                              python=str(python), staging=str(tmp_path / "st"), partition="short", time="5")
        (tmp_path / "nightly.sbatch").write_text(script)
        launcher = slurm.run(["sbatch", "--parsable", "nightly.sbatch"], cwd=tmp_path,
                             check=True).stdout.strip().split(";")[0]
        try:
            assert slurm.wait_job(launcher, timeout=60) == "COMPLETED"
        finally:
            slurm.run(["scancel", launcher])
        job = parse_submitted((tmp_path / f"slurm-{launcher}.out").read_text())
        assert slurm.wait_job(job.merge_job, timeout=120) == "COMPLETED"
        assert (tmp_path / "st" / "merge.exit").read_text() == "0\n"
    finally:
        slurm.wait_idle()
        slurm.run(["scontrol", "delete", "PartitionName=short"])


def _two_hanging_shards(stand_in, tmp_path: Path, monkeypatch) -> str:
    """The script of two shards (and a merge) of tmp_path/site into tmp_path/m.sqlite, run by the stand-in
    interpreter, whose shards run until cancelled."""
    python, _log = stand_in
    monkeypatch.setenv("STAND_IN_HANG", "1")
    return slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=2, cpus_per_task=1,
                        python=str(python), staging=str(tmp_path / "st"))


def test_ctrl_c_cancels_the_jobs(slurm, stand_in, tmp_path, monkeypatch):
    script = _two_hanging_shards(stand_in, tmp_path, monkeypatch)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if re.search(r"[1-9] running", line):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        submit_and_follow(script, poll_s=0.3, out=out)
    job = parse_submitted("\n".join(lines))
    assert "cancelled the shards' job array" in lines[-1]
    assert slurm.wait_job(job.array_job, timeout=60) == "CANCELLED"
    assert slurm.wait_job(job.merge_job, timeout=60) == "CANCELLED"


def test_a_manifest_folder_that_is_not_there_is_refused_before_anything_is_made(slurm, tmp_path):
    """`--db` in a folder that is not there (an unmounted disk): `run --slurm` said "cannot create the lock ... make
    the folder writable", and the printed script's mkdir -p of <db>.staging made the folder, so its merge started a
    new manifest there. Both refuse it as a plain run does (exit 2), and make nothing."""
    (tmp_path / "site" / "OMOP").mkdir(parents=True)
    db = tmp_path / "unmounted" / "m.sqlite"
    for command in (["slurm-script"], ["run", "--slurm"]):
        proc = cli(*command, "--site", str(tmp_path / "site"), "--db", str(db), env=slurm.env)
        assert proc.returncode == 2 and f"the manifest's folder {db.parent} does not exist" in proc.stderr, proc.stderr
        assert proc.stdout == "" and not db.parent.exists()


def test_progress_says_a_cancelled_shard_cancelled_not_failed(slurm, stand_in, tmp_path, monkeypatch):
    """`scancel <array>_0` of one task while `run --slurm` followed: the progress line counted it "1 failed" (as a
    task that failed), though the final summary said "cancelled, none failed"."""
    script = _two_hanging_shards(stand_in, tmp_path, monkeypatch)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        job = parse_submitted("\n".join(lines)) if line.startswith("shards ") else None
        if job and "2 running" in line:
            slurm.run(["scancel", f"{job.array_job}_0"], check=True)
        elif job and "1 running" in line:  # (task 0 ended: the rest too)
            slurm.run(["scancel", job.array_job, job.merge_job], check=True)

    assert submit_and_follow(script, poll_s=0.3, out=out) == 2
    seen = next(line for line in lines if line.startswith("shards ") and "1 running" in line)
    assert "0 failed, 1 cancelled of 2" in seen, lines
    slurm.wait_idle()


_SUBMITTER = """
import signal, sys
from chorus_batch import slurm
from chorus_batch.errors import Stopped
from chorus_batch.slurm import submit_and_follow

slurm.SUBMIT_FINISH_S = float(sys.argv[2])  # how long an interrupted submission is let finish

def stop(signum, _frame):
    raise Stopped(signum)

signal.signal(signal.SIGTERM, stop)  # as the command line's handlers do
try:
    sys.exit(submit_and_follow(open(sys.argv[1]).read(), poll_s=0.3))
except (KeyboardInterrupt, Stopped) as exc:
    print("outcome:", getattr(exc, "outcome", None), flush=True)
    sys.exit(130)
"""


def _ended_since(slurm, before: set[str]) -> tuple[set[str], dict[str, str]]:
    """The jobs queued since `before` (squeue's ids then) and how each ended; one still queued or running after a
    minute (20 s ran out once in CI, under the other worker's load) is said so and cancelled, not left for the next
    test to wait on."""
    ours = {row["id"].split("_")[0] for row in slurm.squeue()} - before
    states = {}
    for job in ours:
        try:
            states[job] = slurm.wait_job(job, timeout=60)
        except AssertionError:
            states[job] = "still queued or running"
    if ours:
        slurm.run(["scancel", *ours])
    return ours, states


@pytest.mark.parametrize("signum, whom", [("SIGINT", "the terminal's group"), ("SIGTERM", "the command"),
                                          ("SIGINT", "the script run by hand"), ("SIGINT", "a hung sbatch")])
def test_a_stop_while_the_jobs_are_submitted_leaves_no_job_queued(slurm, stand_in, tmp_path, monkeypatch, signum,
                                                                   whom):
    """Ctrl-C (to the terminal's whole foreground group) or SIGTERM while the script was between its two sbatch calls
    killed it there: the shards' array stayed queued with no merge after it, and the follower, with no job ids yet,
    cancelled nothing. Now `run --slurm` lets the submission finish, then cancels both jobs, and says so; the script
    run by hand (`bash nightly.sbatch`) cancels the array it queued."""
    import signal
    import time

    python, _log = stand_in
    monkeypatch.setenv("STAND_IN_HANG", "1")  # the shards run until cancelled
    held = tmp_path / "merge-sbatch-started"
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    # The real sbatch, slowed before the merge's submission: the window in which the stop comes.
    _executable(wrappers / "sbatch", f"""#!/bin/bash
case " $* " in *" --dependency="*) touch {shlex.quote(str(held))}; sleep {600 if whom == "a hung sbatch" else 3} ;; esac
exec {shlex.quote(shutil.which("sbatch"))} "$@"
""")
    script = tmp_path / "job.sbatch"
    script.write_text(slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=2,
                                   cpus_per_task=1, python=str(python), staging=str(tmp_path / "st")))
    before = {row["id"].split("_")[0] for row in slurm.squeue()}
    command = ["bash", str(script)] if whom == "the script run by hand" else [
        sys.executable, "-c", _SUBMITTER, str(script), "2" if whom == "a hung sbatch" else "120"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PATH": f"{wrappers}:{os.environ['PATH']}"})
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        if whom == "the command":
            proc.send_signal(getattr(signal, signum))
        else:
            os.killpg(proc.pid, getattr(signal, signum))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        ours, states = _ended_since(slurm, before)
    assert proc.returncode == 130 and "Traceback" not in err, out + err
    if whom != "the script run by hand":  # said at once, not after the wait (a minute without a word before)
        assert err.startswith(f"chorus-batch: stopping: the submission is let finish (at most "
                              f"{2.0 if whom == 'a hung sbatch' else 120.0} s), then the jobs it queued are cancelled\n"), err
    if whom == "the script run by hand":  # stopped before the merge's sbatch ran: the array alone, cancelled
        assert len(ours) == 1 and set(states.values()) == {"CANCELLED"}, (states, out, err)
        assert re.search(r"stopped while submitting; cancelled the job array \d+ of the shards: nothing will be "
                         r"merged", err), err
        return
    if whom == "a hung sbatch":  # not waited on for ever: stopped, and its trap cancelled the array it had queued
        assert len(ours) == 1 and set(states.values()) == {"CANCELLED"}, (states, out, err)
        assert re.search(r"outcome: the submission did not finish in 2.0 s and was stopped: nothing was committed; "
                         r"it cancelled the shards' job array \d+ it had queued", out), out
        return
    assert len(ours) == 2 and set(states.values()) == {"CANCELLED"}, (states, out, err)
    assert re.search(r"outcome: the submission was let finish, then its shards' job array \d+ and merge job \d+ "
                     r"were cancelled before the merge ran: nothing was committed", out), out


def test_a_stop_once_the_jobs_are_queued_before_they_are_followed_cancels_them(slurm, stand_in, tmp_path, monkeypatch):
    """SIGTERM after the script had queued both jobs but before their ids were handed to the follower (while its
    output was read, or the manifest's submission record was written): the stop went out of `run --slurm` with
    nothing cancelled and nothing said of the jobs, which then hashed the site and committed after "stopped". Now
    they are cancelled and said so."""
    import signal

    script = tmp_path / "job.sbatch"
    db = tmp_path / "m.sqlite"
    script.write_text(_two_hanging_shards(stand_in, tmp_path, monkeypatch))
    before = {row["id"].split("_")[0] for row in slurm.squeue()}
    submitter = _SUBMITTER.replace("poll_s=0.3)", "poll_s=0.3, db=sys.argv[3], argv=['run', '--slurm'])")
    proc = subprocess.Popen([sys.executable, "-c", submitter, str(script), "120", str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "slurm-submitted"})
    try:
        assert proc.stderr is not None
        while "test pause at slurm-submitted" not in (line := proc.stderr.readline()):
            assert line or proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        ours, states = _ended_since(slurm, before)
    assert proc.returncode == 130 and "Traceback" not in err, out + err
    assert len(ours) == 2 and set(states.values()) == {"CANCELLED"}, (states, out, err)
    assert re.search(r"outcome: .*shards' job array \d+ and merge job \d+ were cancelled before the merge ran: nothing "
                     r"was committed", out), out
    assert not Path(str(db) + ".slurm.lock.json").exists()  # (no record of jobs left to refuse the next one by)


# ----------------------------------------------------------------------------- end to end
def _manifest_view(db: Path) -> dict:
    """What must agree between a sharded and a single-node run (labels and times aside)."""
    return {
        "current": sorted(query(db, "SELECT srcfile, size, md5 FROM source_files WHERE time_invalid IS NULL")),
        "versions": query(db, "SELECT mode, n_added, n_removed, n_replaced, n_renamed, n_unchanged, n_errors, n_files "
                              "FROM versions ORDER BY label"),
        "findings": sorted(query(db, "SELECT severity, rule, count(*) FROM findings GROUP BY 1, 2")),
    }


@pytest.fixture(scope="module")
def small_site(tmp_path_factory):
    from chorus_batch.testdata import Spec, make_testdata

    out = tmp_path_factory.mktemp("slurm-site")
    make_testdata(out, Spec(persons=6))
    return out / "first", out / "second"


def _logs(job) -> str:
    return "\n".join(f"--- {path.name}:\n{path.read_text(errors='replace')[-3000:]}"
                     for path in sorted(job.logs.glob("*.out")))


def _reference(tmp_path: Path, *sites: Path) -> tuple[Path, list[int]]:
    """A single-node `run` of each snapshot in turn into one manifest; their exit codes."""
    ref = tmp_path / "single.sqlite"
    codes = [cli("run", "--site", str(site), "--db", str(ref), "--workers", "2", "-q", timeout=300).returncode
             for site in sites]
    return ref, codes


def test_sbatch_the_script_as_is_then_run_slurm_match_a_single_node_run(slurm, small_site, tmp_path):
    first, second = small_site
    ref, ref_codes = _reference(tmp_path, first, second)
    db = tmp_path / "sharded.sqlite"
    env = {**slurm.env}

    # The first snapshot: the script submitted as is (`sbatch nightly.sbatch`), the default staging folder.
    made = cli("slurm-script", "--site", str(first), "--db", str(db), "--shards", "4", "--cpus-per-task", "1", env=env)
    assert made.returncode == 0, made.stderr
    (tmp_path / "nightly.sbatch").write_text(made.stdout)
    submitted = slurm.run(["sbatch", "--parsable", "nightly.sbatch"], cwd=tmp_path, check=True)
    launcher = submitted.stdout.strip().split(";")[0]
    assert slurm.wait_job(launcher, timeout=120) == "COMPLETED"
    job = parse_submitted((tmp_path / f"slurm-{launcher}.out").read_text())
    assert job.staging.parent == Path(str(db) + ".staging") and stat.S_IMODE(job.staging.stat().st_mode) == 0o700
    assert slurm.wait_job(job.merge_job, timeout=600) == ("COMPLETED" if ref_codes[0] == 0 else "FAILED"), _logs(job)
    assert int((job.staging / "merge.exit").read_text()) == ref_codes[0]
    # the default staging folder keeps its logs and merge.exit, not the shards' lists of files (person paths) once merged
    assert sorted(p.name for p in job.staging.iterdir()) == ["logs", "merge.exit"]
    # its merge run again (the script's "rerun the merge" line) is told they were merged, not "run the shards first"
    again = cli("run", "--site", str(first), "--db", str(db), "--merge", str(job.staging), env=env)
    assert again.returncode == 2 and "merged already" in again.stderr and "run the shards first" not in again.stderr
    assert f"chorus-merge-{job.merge_job}.out" in again.stderr, again.stderr

    # The second snapshot: `run --slurm` submits, follows and exits with the merge's code.
    proc = cli("run", "--slurm", "--site", str(second), "--db", str(db), "--shards", "4", "--cpus-per-task", "1",
               "--staging", str(tmp_path / "st2"), env=env, timeout=600)
    assert proc.returncode == ref_codes[1], proc.stdout + proc.stderr
    assert "merge job" in proc.stdout and "exited with code" in proc.stdout
    # a --staging given loses its merged shards too (they were kept for ever), not its logs
    assert sorted(p.name for p in (tmp_path / "st2").iterdir()) == ["logs", "merge.exit"]

    assert _manifest_view(db) == _manifest_view(ref)
    slurm.wait_idle()


def test_a_cancelled_shard_is_refused_by_the_merge_and_rerun_alone(slurm, small_site, tmp_path, monkeypatch):
    first, _second = small_site
    ref, ref_codes = _reference(tmp_path, first)
    db = tmp_path / "sharded.sqlite"
    staging = tmp_path / "st"
    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    # Two CPUs, two per task: the tasks run one after another, so the last one is still pending here.
    script = slurm_script(site=str(first), db=str(db), shards=4, cpus_per_task=2, staging=str(staging))
    job = submit(script)
    assert slurm.run(["scancel", f"{job.array_job}_3"]).returncode == 0
    lines: list[str] = []
    assert follow(job, poll_s=0.5, out=lines.append) == 2
    text = "\n".join(lines)
    assert "did not run: 1 of 4 shards did not finish" in text, text + _logs(job)
    # Slurm 22.05 forgets a pending array task cancelled at once: named, whatever state is left to report
    assert "shard 3 of 4:" in text and "nothing was committed" in text, text
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]

    # The merge run by hand refuses: exit 2, naming the shard and the command that reruns it.
    refused = cli("run", "--site", str(first), "--db", str(db), "--merge", str(staging))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert re.search(r"shard[- ]3|3/4|3-of-4", refused.stderr), refused.stderr
    assert "--shard 3/4" in refused.stderr or "SLURM_ARRAY_TASK_ID" in refused.stderr or "--array=3" in refused.stderr

    # Rerun that shard alone on the cluster (the command follow printed), then the merge.
    rerun = next(line for line in lines if "rerun it:" in line).split("rerun it: ", 1)[1]
    shard = slurm.run(["sbatch", "--parsable", f"--output={staging}/logs/rerun-%j.out", "--wrap", rerun], check=True)
    assert slurm.wait_job(shard.stdout.strip().split(";")[0], timeout=300) == "COMPLETED"
    merged = cli("run", "--site", str(first), "--db", str(db), "--merge", str(staging), timeout=300)
    assert merged.returncode == ref_codes[0], merged.stdout + merged.stderr
    view, expected = _manifest_view(db), _manifest_view(ref)
    assert view["current"] == expected["current"] and view["versions"] == expected["versions"][:1]
    slurm.wait_idle()


def test_a_shard_stopped_at_its_time_limit_is_said_with_the_time_to_give_and_rerun_alone(slurm, small_site, tmp_path):
    """`run --slurm --time 1` whose shards outlast it (held at their hashing): Slurm stops them (TIMEOUT) and the
    follower said "shard 1 of 2: timeout" with a command that reruns it, not that the same submission ends the same
    way and what to give instead. Then the merge by hand refuses, naming a shard and its rerun; each rerun alone, the
    merge commits what a single-node run does. Staging on a path with spaces. (Slurm's limits are whole minutes, and
    its controller checks them every 30 s: the running shards, submitted with their 1-minute limit, have it cut to 0
    with `scontrol update`, as an administrator may, once one waits at its hashing (the other may have no files), and
    Slurm stops them at its next check, not a minute later.)"""
    from chorus_batch.slurm import SHARD_JOB

    first, _second = small_site
    ref, ref_codes = _reference(tmp_path, first)
    db, staging = tmp_path / "my manifest.sqlite", tmp_path / "staging with spaces"
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--slurm", "--site", str(first), "--db",
                             str(db), "--shards", "2", "--cpus-per-task", "1", "--time", "1", "--staging", str(staging)],
                            env={**os.environ, **slurm.env, "CHORUS_BATCH_TEST_PAUSE": "hashing"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:  # until each task waits at its hashing or has finished (a shard may have no files)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
            logs = {int(log.stem.rpartition("_")[2]): log for log in (staging / "logs").glob(f"{SHARD_JOB}-*_*.out")}
            if not logs:
                continue
            array_job = next(iter(logs.values())).stem.removeprefix(f"{SHARD_JOB}-").partition("_")[0]
            states = {row["id"]: row["state"] for row in slurm.squeue(array_job)}
            held = sorted(k for k, log in logs.items() if "test pause at hashing" in log.read_text(errors="replace"))
            if held and all(k in held or states.get(f"{array_job}_{k}") == "COMPLETED" for k in (0, 1)):
                break
        for k in held:
            task = f"{array_job}_{k}"
            shown = slurm.run(["scontrol", "show", "job", task], check=True).stdout
            assert re.search(r"TimeLimit=00:01:00\s", shown), shown  # --time 1
            slurm.run(["scontrol", "update", f"JobId={task}", "TimeLimit=0"], check=True)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert out.returncode == 2, out.stdout + out.stderr
    timed_out = re.findall(r"shard (\d) of 2: timeout \(Slurm stopped it at its time limit: submit again with a longer "
                           r"--time, or more --shards \(each hashes less\)\); log ", out.stdout)
    assert timed_out and "nothing was committed" in out.stdout, out.stdout + out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]

    shards = [int(k) for k in timed_out]
    assert shards == held, out.stdout
    for k in shards:
        refused = cli("run", "--site", str(first), "--db", str(db), "--workers", "1", "--merge", str(staging))
        assert refused.returncode == 2 and f"shard {k}/2 is incomplete" in refused.stderr, refused.stderr
        assert f"--shard {k}/2 --staging {shlex.quote(str(staging))}" in refused.stderr, refused.stderr
        rerun = cli("run", "--site", str(first), "--db", str(db), "--workers", "1", "--shard", f"{k}/2", "--staging",
                    str(staging), "-q")
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    merged = cli("run", "--site", str(first), "--db", str(db), "--workers", "1", "--merge", str(staging), timeout=300)
    assert merged.returncode == ref_codes[0], merged.stdout + merged.stderr
    assert _manifest_view(db)["current"] == _manifest_view(ref)["current"]
    slurm.wait_idle()


def test_ctrl_c_after_the_merge_committed_says_the_version_stays(slurm, small_site, tmp_path):
    """Ctrl-C on `run --slurm` cancels the jobs; it said "nothing was committed" even when the merge had committed
    its version before scancel stopped it. Now it says the merge had started and its version stays (and it does)."""
    import signal
    import time

    first, _second = small_site
    db, staging = tmp_path / "m.sqlite", tmp_path / "st"
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--slurm", "--site", str(first), "--db", str(db),
                             "--shards", "2", "--cpus-per-task", "1", "--staging", str(staging)],
                            env={**os.environ, **slurm.env, "CHORUS_BATCH_TEST_PAUSE": "committed"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any("test pause at committed" in log.read_text(errors="replace")
                      for log in (staging / "logs").glob("chorus-merge-*.out")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "the merge had started: a version it committed before it was stopped stays" in err, err
    assert "nothing was committed" not in err and "Traceback" not in err, err
    job = parse_submitted(out)
    assert slurm.wait_job(job.merge_job, timeout=60) == "CANCELLED"
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    slurm.wait_idle()


def test_a_merge_stopped_by_slurm_still_writes_its_exit_code(slurm, small_site, tmp_path, monkeypatch):
    """Slurm stops a job at its time limit (or scancel) with SIGTERM to each of its processes: the merge's run stopped
    and exited 143, but the job's shell died of the same signal before it wrote merge.exit, which README promises
    holds the merge's exit code (`sbatch nightly.sbatch` users read it; the follower fell back on the job's state)."""
    import time

    first, _second = small_site
    db, staging = tmp_path / "m.sqlite", tmp_path / "st"
    for key, value in {**slurm.env, "CHORUS_BATCH_TEST_PAUSE": "commit"}.items():
        monkeypatch.setenv(key, value)
    job = submit(slurm_script(site=str(first), db=str(db), shards=2, cpus_per_task=1, staging=str(staging)))
    deadline = time.monotonic() + 300
    while not (job.merge_log().exists() and "test pause at commit" in job.merge_log().read_text(errors="replace")):
        assert time.monotonic() < deadline, _logs(job)
        time.sleep(0.5)
    assert slurm.run(["scancel", job.merge_job]).returncode == 0
    lines: list[str] = []
    assert follow(job, poll_s=0.5, out=lines.append) == 143, "\n".join(lines) + _logs(job)
    assert (staging / "merge.exit").read_text() == "143\n", _logs(job)
    assert f"merge job {job.merge_job} exited with code 143" in "\n".join(lines)
    assert "terminated (SIGTERM); nothing was committed" in job.merge_log().read_text()
    # the follower repeats the merge's own word on it; scancel is no limit of Slurm's: no "longer --time" for it
    assert lines[-1].startswith("  chorus-batch: terminated (SIGTERM); nothing was committed"), lines
    assert not any("Slurm stopped" in line for line in lines), lines
    slurm.wait_idle()


def test_run_slurm_piped_to_head_follows_to_the_end_and_exits_with_the_merges_code(slurm, small_site, tmp_path):
    """`run --slurm | head -1`: the reader left at the first line, and the command ended quietly with exit 0 while
    the jobs were still pending (a success cron was told before the merge ran). It follows them to the end,
    writing nothing more, and exits with the merge's code."""
    first, _second = small_site
    db, staging = tmp_path / "m.sqlite", tmp_path / "st"
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--slurm", "--site", str(first), "--db", str(db),
                             "--shards", "2", "--cpus-per-task", "1", "--staging", str(staging)],
                            env={**os.environ, **slurm.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("staging: ")
    proc.stdout.close()  # the reader leaves
    _out, err = proc.communicate(timeout=600)
    merged = int((staging / "merge.exit").read_text())
    assert proc.returncode == merged and merged in (0, 1), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    slurm.wait_idle()


def test_a_mem_the_clusters_vsizefactor_makes_too_small_is_refused_before_anything_is_queued(slurm, tmp_path):
    """On a cluster with VSizeFactor (the test cluster's is 1000%), --mem times it is each job's address-space limit:
    with --mem=300M every shard and the merge had 3000 MiB, below what a run maps, and each exited 2 in the night.
    The script asks the cluster first and queues nothing, saying the --mem that is enough; the manifest is untouched."""
    site = tmp_path / "site"
    site.mkdir()
    db = tmp_path / "m.sqlite"
    before = {job["id"] for job in slurm.squeue()}
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(db), "--shards", "2", "--cpus-per-task", "1",
               "--mem", "300M", env=slurm.env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "VSizeFactor=1000 makes the jobs' address-space limit (ulimit -v) 3000 MiB" in proc.stderr, proc.stderr
    assert "give --mem=410M or more; nothing was submitted or committed" in proc.stderr, proc.stderr
    assert {job["id"] for job in slurm.squeue()} == before and not db.exists()
    assert not (tmp_path / "m.sqlite.staging").exists() or not any((tmp_path / "m.sqlite.staging").iterdir())


def test_a_mem_beyond_what_slurm_holds_is_refused_before_a_script_is_made(tmp_path):
    """Slurm holds a job's memory as MiB in 63 bits and multiplies G and T into it unchecked: --mem
    18014398509481984G wrapped, sbatch took it and the job never started (BadConstraints), and the script's
    VSizeFactor check called it "too little". Refused up front, exit 2, no script; the largest Slurm holds is fine."""
    (tmp_path / "site").mkdir()
    args = ("slurm-script", "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"), "--mem")
    for mem in ("18014398509481984G", "9007199254740992G", "9223372036854775808M", "8796093022208T",
                "99999999999999999999999K"):
        out = cli(*args, mem)
        assert out.returncode == 2 and f"{mem!r} is more memory than Slurm can be asked for" in out.stderr, out.stderr
        assert out.stdout == "" and "Traceback" not in out.stderr
    out = cli(*args, "9223372036854775807M")
    assert out.returncode == 0 and "--mem=9223372036854775807M" in out.stdout, out.stderr


def test_a_mem_too_large_for_bash_arithmetic_is_left_to_sbatch_not_said_too_little(slurm, tmp_path):
    """The script's VSizeFactor check multiplied --mem's MiB by the factor in bash: past 2**63 that went negative and a
    --mem of 9300000000000000M was refused as "too little ... (ulimit -v) -91467440737095516 MiB". Now more than the
    node has is sbatch's to refuse, with its own message."""
    site = tmp_path / "site"
    site.mkdir()
    db = tmp_path / "m.sqlite"
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(db), "--shards", "2", "--cpus-per-task", "1",
               "--mem", "9300000000000000M", env=slurm.env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "too little" not in proc.stderr and "Memory specification can not be satisfied" in proc.stderr, proc.stderr
    assert not slurm.active() and not db.exists()


def test_a_staging_folder_on_a_full_or_read_only_file_system_is_said_before_anything_is_queued(slurm, tmp_path,
                                                                                                 small_disk):
    """Full, the shards' array was queued, every task failed without a log (the follower named logs that were empty)
    and the merge never ran; read-only, the script stopped at its mkdir and `run --slurm` said "submitting the Slurm
    jobs failed", exit 3, with `bash -x`. Now both are said with the file system's word before anything is queued:
    exit 2, nothing submitted, no manifest, and the default staging folder made for the submission gone again."""
    from conftest import fill

    site = tmp_path / "site"
    site.mkdir()
    (site / "x.txt").write_text("x")
    fill(small_disk)
    for db, staging in ((small_disk / "m.sqlite", None), (tmp_path / "m.sqlite", small_disk / "st")):
        args = ["--staging", str(staging)] if staging else []
        proc = cli("run", "--slurm", "--site", str(site), "--db", str(db), "--shards", "2", "--cpus-per-task", "1",
                   *args, env=slurm.env, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "the staging folder cannot be written" in proc.stderr and "No space left on device" in proc.stderr
        assert "nothing was submitted or committed" in proc.stderr and "chorus-slurm-" not in proc.stderr, proc.stderr
        assert not slurm.active() and not db.exists()
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "st"]
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        proc = cli("run", "--slurm", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--shards", "2",
                   "--staging", str(small_disk / "new"), env=slurm.env, timeout=120)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the staging folder cannot be written" in proc.stderr and "Read-only file system" in proc.stderr, proc.stderr
    assert not slurm.active()


def test_an_array_sbatch_refuses_is_said_with_sbatchs_message_and_what_to_do(slurm, tmp_path):
    """More shards than the cluster's MaxArraySize (1001 by default: at most tasks 0-1000): sbatch refuses the array.
    `run --slurm` said "submitting the Slurm jobs failed (exit code 1)", exit 3, and sent the user to `bash -x`; now
    sbatch's own message, what to do (fewer --shards, or the administrators), exit 2, nothing submitted or committed.
    An unknown partition alike, with its own fix."""
    site = tmp_path / "site"
    site.mkdir()
    db = tmp_path / "m.sqlite"
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(db), "--shards", "1002", "--staging",
               str(tmp_path / "st"), env={**slurm.env}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sbatch refused the shards' job array: sbatch: error: Batch job submission failed:" in proc.stderr
    assert "give fewer --shards than 1002" in proc.stderr and "MaxArraySize" in proc.stderr
    assert "nothing was submitted and nothing was committed" in proc.stderr and "Traceback" not in proc.stderr
    assert not db.exists() and slurm.active() == []
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(db), "--shards", "2", "--partition", "nosuch",
               "--staging", str(tmp_path / "st"), env={**slurm.env}, timeout=120)
    assert proc.returncode == 2 and "sbatch refused the shards' job array: sbatch: error:" in proc.stderr, proc.stderr
    assert "--partition" in proc.stderr and "nothing was committed" in proc.stderr
    assert slurm.active() == []


def test_a_task_with_more_cpus_than_run_takes_workers_runs_its_shard(tmp_path):
    """--cpus-per-task 300 (a big node) was also each job's --workers 300, which `run` refuses (at most 256): every
    shard of the night failed with exit 2. The jobs now run with --workers up to 256, on all the CPUs they have."""
    record, bin_dir = tmp_path / "record", tmp_path / "bin"
    record.mkdir()
    bin_dir.mkdir()
    _executable(bin_dir / "sbatch", FAKE_SBATCH)
    site, db, staging = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "st"
    (site / "000001").mkdir(parents=True)
    (site / "000001" / "a.txt").write_text("a")
    script = slurm_script(site=str(site), db=str(db), shards=1, cpus_per_task=300, staging=str(staging))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record)}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    args100, body100 = (record / "100").read_text().split("---\n")
    assert "--cpus-per-task=300" in args100.splitlines()
    # the shard's job body as Slurm runs it, with the real interpreter: it lists its shard
    env_job = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "CHORUS_STAGING": str(staging)}
    shard = subprocess.run(["bash", "-c", body100], env=env_job, capture_output=True, text=True)
    assert shard.returncode == 0, shard.stderr
    assert "--workers 256" in body100 and (staging / "shard-0-of-1" / "scan.json").exists()


@pytest.mark.parametrize("command", [["slurm-script"], ["run", "--slurm"]])
def test_a_staging_folder_that_is_a_file_is_refused_before_a_script_is_made(tmp_path, command):
    """--staging naming a file (or a path under one), or a file where the default <db>.staging goes: the script was
    printed, and submitted its mkdir failed (`run --slurm`: exit 3, "submitting the Slurm jobs failed", nothing said
    of what was submitted). Now exit 2 before any script is made, naming the file."""
    site, db, afile = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "afile"
    site.mkdir()
    afile.write_text("x")
    for staging in (afile, afile / "below"):
        out = cli(*command, "--site", str(site), "--db", str(db), "--staging", str(staging))
        assert out.returncode == 2, out.stderr
        assert f"{afile} is a file, not a folder; no script was made and nothing was submitted" in out.stderr
        assert out.stdout == ""
    (tmp_path / "m.sqlite.staging").write_text("x")
    out = cli(*command, "--site", str(site), "--db", str(db))
    assert out.returncode == 2 and f"{db}.staging is a file, not a folder" in out.stderr, out.stderr
    assert cli("slurm-script", "--site", str(site), "--db", str(db), "--staging",
               str(tmp_path / "new" / "st")).returncode == 0  # a folder that is not there yet: made by the script


def test_an_address_space_limit_slurm_set_from_mem_is_said_with_the_mem_that_lifts_it(tmp_path):
    """A cluster with VSizeFactor=150 limits each job's address space (soft and hard) to its --mem times 150%: a job
    with --mem=2000M got 3000 MiB, below what a run maps, and was told to remove it (`ulimit -v unlimited`, which a
    job cannot do above its hard limit) and "to bound memory, use Slurm --mem", the very thing that had set it. It
    is said as Slurm's, with the --mem that lifts it; a memory failure under it likewise."""
    import resource

    limit = 3000 * 2**20
    env = {"SLURM_JOB_ID": "42", "SLURM_MEM_PER_NODE": "2000"}  # what slurmd sets in a job given --mem=2000M

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    site = tmp_path / "site"
    site.mkdir()
    proc = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--site", str(site), "--db",
                           str(tmp_path / "m.sqlite")], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, preexec_fn=capped)
    assert proc.returncode == 2, proc.stderr
    assert "this Slurm job's 2000 MiB of memory times 150%" in proc.stderr and "VSizeFactor=150" in proc.stderr
    assert "--mem=2731M or more" in proc.stderr and "slurm-script --mem 2731M" in proc.stderr, proc.stderr
    assert "use Slurm --mem" not in proc.stderr and not (tmp_path / "m.sqlite").exists()
    said = subprocess.run([sys.executable, "-c", "from chorus_batch.errors import out_of_memory\n"
                           "e = out_of_memory(MemoryError()); print(e.what, e.where, e.fix, sep='\\n')"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60, preexec_fn=capped)
    assert "2000 MiB of memory times 150%" in said.stdout and "limit resident memory with Slurm --mem" not in said.stdout, \
        said.stdout + said.stderr


def test_a_plain_run_in_every_task_of_a_job_array_is_told_how_to_split_the_site(tmp_path, monkeypatch):
    """`sbatch --array=0-1 --wrap "chorus-batch run --site S --db M"`: a plain run takes no shard from the array
    (only with --staging), so every task ran the whole site into one manifest; all but one were refused "locked by
    another run ... run it again once that run has finished", the whole site again. Refused still (exit 4), but said
    as a task of the same array, with how a site is split over an array. (A task of another array, or a lock an
    upload holds, is said as before.)"""
    from chorus_batch.errors import ManifestLocked
    from chorus_batch.store.lock import manifest_lock

    db = tmp_path / "m.sqlite"
    for key, value in {"SLURM_ARRAY_JOB_ID": "17", "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}.items():
        monkeypatch.setenv(key, value)
    with manifest_lock(db, ["run", "--db", str(db)]):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
        with pytest.raises(ManifestLocked) as caught:
            with manifest_lock(db, ["run", "--db", str(db)]):
                pass
        said = f"{caught.value.what}\n{caught.value.fix}"
        assert "locked by task 17_0 of this Slurm job array" in said and "whole site" in said, said
        assert "run --staging DIR" in said and "chorus-batch slurm-script" in said and "without --array" in said, said
        assert "run it again once" not in said, said
        monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "18")  # another array's task (another site's night): as before
        with pytest.raises(ManifestLocked) as caught:
            with manifest_lock(db, ["run", "--db", str(db)]):
                pass
        # (said as another run's lock, not this array's; the holder is this test's own process, which is said so)
        assert "locked by another run" in caught.value.what and "of this Slurm job array" not in caught.value.what


def test_a_refused_merge_job_says_where_its_staging_folder_stays(tmp_path):
    """sbatch took the shards' array but refused the merge job: the script cancels the array and `run --slurm` said
    "nothing was committed", not that the submission's staging folder (the cancelled tasks' logs, and whatever a task
    that had started wrote) stays, nor where. The script names it last on its line; the message names it."""
    from chorus_batch.slurm import REFUSED_MERGE, _refused

    script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=2, cpus_per_task=1,
                          python=sys.executable)
    assert f'{REFUSED_MERGE}; cancelled the shards\' job array $shards_job: nothing will be merged; staging folder: ' \
           '$staging" >&2' in script
    said = ("sbatch: error: Batch job submission failed: Job dependency problem\n"
            f"{REFUSED_MERGE}; cancelled the shards' job array 5: nothing will be merged; staging folder: {tmp_path} st\n")
    exc = _refused(said)
    assert exc.what.startswith("sbatch refused the merge job (the shards' job array was cancelled): sbatch: error: "
                               "Batch job submission failed: Job dependency problem; nothing was committed"), exc.what
    assert f"the staging folder {tmp_path} st stays" in exc.what and "nothing in it is to be merged" in exc.what


def test_a_slurm_script_cut_short_while_written_submits_nothing(tmp_path):
    """`slurm-script > nightly.sbatch` cut short as the merge job's lines were written (a full disk, a quota; here
    the file-size limit, which cuts at a byte): chorus-batch exits 3, but the part written, submitted, queued the
    shards' job array and no merge (a night's hashing for nothing, and no message). The script checks its own last
    line first: cut short, it submits nothing (exit 2)."""
    import resource

    (tmp_path / "site").mkdir()
    args = ["slurm-script", "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite")]
    whole = cli(*args)
    assert whole.returncode == 0, whole.stderr
    room = whole.stdout.encode().index(b"merge_job=$(")  # the shards' submission written, the merge's not
    script = tmp_path / "nightly.sbatch"
    with open(script, "wb") as out:  # as the shell's `>` opens it
        written = subprocess.run([sys.executable, "-m", "chorus_batch", *args], stdout=out, stderr=subprocess.PIPE,
                                 text=True, timeout=120,
                                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (room, room)))
    assert written.returncode == 3, written.stderr  # a file past the file-size limit (README)
    assert 0 < script.stat().st_size < len(whole.stdout.encode())
    tools, calls = tmp_path / "bin", tmp_path / "calls"  # sbatch and scancel that record being called
    tools.mkdir()
    for tool in ("sbatch", "scancel"):
        (tools / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {calls}\necho 4242\n")
        (tools / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    cut = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert cut.returncode == 2 and "is incomplete" in cut.stderr and "nothing was submitted" in cut.stderr, cut.stderr
    assert not calls.exists()
    (tmp_path / "whole.sbatch").write_text(whole.stdout)
    ran = subprocess.run(["bash", str(tmp_path / "whole.sbatch")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert [line.split()[0] for line in calls.read_text().splitlines()] == [str(tools / "sbatch")] * 2
    # Piped into bash (or bash -s, or <(...)) there is no file to check its last line in: it submits nothing, whole
    # or not (it skipped the check, and one cut short mid-pipe queued the shards and no merge)
    calls.unlink()
    for how in (["bash"], ["bash", "-s"]):
        piped = subprocess.run(how, input=whole.stdout, capture_output=True, text=True, env=env, cwd=tmp_path,
                               timeout=60)
        assert piped.returncode == 2 and "not read from its own file" in piped.stderr, piped.stderr
        assert "nothing was submitted" in piped.stderr and not calls.exists()
    # given as its text (bash -c "$(cat ...)"): whole, it runs; cut short, it submits nothing
    cut_text = whole.stdout[:room]
    for text, code in ((cut_text, 2), (whole.stdout, 0)):
        given = subprocess.run(["bash", "-c", text], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert given.returncode == code, given.stderr
        assert (code == 2) == ("the script given to bash -c is incomplete" in given.stderr), given.stderr
        assert (code == 2) != calls.exists()
    # sourced from another script, it checks its own file, not that script's ($0: "wrapper.sh is incomplete")
    calls.unlink()
    (tmp_path / "wrapper.sh").write_text(f"set -e\n. {tmp_path / 'whole.sbatch'}\n")
    sourced = subprocess.run(["bash", str(tmp_path / "wrapper.sh")], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
    assert sourced.returncode == 0 and calls.exists(), sourced.stderr
    (tmp_path / "wrapper.sh").write_text(f"set -e\n. {script}\n")  # the one cut short
    sourced = subprocess.run(["bash", str(tmp_path / "wrapper.sh")], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
    assert sourced.returncode == 2 and f"{script} is incomplete" in sourced.stderr, sourced.stderr


def test_the_submitting_jobs_own_output_is_owner_only(slurm, stand_in, tmp_path):
    """`sbatch nightly.sbatch` from a shell with umask 022 left the submitting job's slurm-<job>.out readable by all
    (it names the site, the manifest and the staging folder); the jobs' logs were owner-only. It is owner-only too."""
    python, _log = stand_in
    script = slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=1, cpus_per_task=1,
                          python=str(python), staging=str(tmp_path / "st"))
    (tmp_path / "nightly.sbatch").write_text(script)
    launcher = slurm.run("umask 022 && sbatch --parsable nightly.sbatch", cwd=tmp_path,
                         check=True).stdout.strip().split(";")[0]
    try:
        assert slurm.wait_job(launcher, timeout=60) == "COMPLETED"
    finally:
        slurm.run(["scancel", launcher])
        slurm.wait_idle()
    output = tmp_path / f"slurm-{launcher}.out"
    assert "staging:" in output.read_text()
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_a_slurm_conf_that_names_no_file_is_said_at_once(tmp_path):
    """SLURM_CONF naming a file that is not there (an old cluster's path left in a profile): sbatch retried reading it
    for a minute, then `run --slurm` said "sbatch reaches no Slurm cluster". It is said at once, by `run --slurm` and
    by the script run by hand, naming the variable; nothing is submitted, no manifest is made."""
    assert shutil.which("sbatch"), "Slurm's sbatch is not installed: run scripts/test (it installs slurm-wlm)"
    site, db, missing = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "no-slurm.conf"
    site.mkdir()
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(db), "--shards", "2",
               env={"SLURM_CONF": str(missing)}, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert f"SLURM_CONF names {missing}, which is not there: Slurm's commands cannot read" in proc.stderr, proc.stderr
    assert "nothing was submitted and nothing was committed" in proc.stderr and not db.exists()
    script = tmp_path / "job.sbatch"
    script.write_text(slurm_script(site=str(site), db=str(db), shards=2, cpus_per_task=1, python=sys.executable))
    by_hand = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=20,
                             env={**os.environ, "SLURM_CONF": str(missing)})
    assert by_hand.returncode == 2 and f"SLURM_CONF names {missing}, which is no file" in by_hand.stderr, by_hand.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.sbatch", "site"]


def test_a_second_run_slurm_on_the_same_manifest_submits_nothing(tmp_path):
    """Two `run --slurm` at once on one manifest (two cron lines, a cron line and a user at a login node): the second
    hashed the whole site again and its merge was refused as stale once the first committed (exit 2, "rerun the
    shards"); with one --staging, its script removed the first's completion records and its shards ran into the
    first's locks. The second is refused at once (exit 4), naming the first, and submits nothing."""
    from chorus_batch.slurm import submission_lock

    site, db, bin_dir, called = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "bin", tmp_path / "sbatch-called"
    site.mkdir()
    bin_dir.mkdir()
    for tool in ("sbatch", "squeue", "scancel"):  # (a stand-in that says it was called and refuses: nothing queued)
        _executable(bin_dir / tool, f"#!/bin/sh\necho {tool} >> '{called}'\nexit 1\n")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with submission_lock(str(db), ["run", "--slurm"]):  # (the first one, following its jobs)
        # the same manifest by another spelling of its path (relative, from its folder)
        proc = cli("run", "--slurm", "--site", str(site), "--db", "m.sqlite", "--shards", "2", cwd=tmp_path, env=env,
                   timeout=30)
    assert proc.returncode == 4, proc.stderr
    assert ("another `chorus-batch run --slurm` (or the Slurm script, submitted with sbatch) is submitting or following "
            "Slurm jobs for the manifest") in proc.stderr
    assert f"pid {os.getpid()} on host" in proc.stderr and "submitted nothing" in proc.stderr, proc.stderr
    assert not called.exists() and not Path(str(db) + ".staging").exists()
    # once the first has ended, the next one submits (here: to the stand-in sbatch, which refuses it)
    after = cli("run", "--slurm", "--site", str(site), "--db", str(db), "--shards", "2", env=env, timeout=30)
    assert after.returncode == 2 and called.exists(), after.stderr


def test_run_slurm_does_not_warn_of_its_own_variable_nor_pass_it_to_the_jobs(tmp_path):
    """`run --slurm` tells the script it runs that it holds the manifest's lock (CHORUS_BATCH_SLURM_LOCKED): the
    script's `upgrade` warned "environment variable CHORUS_BATCH_SLURM_LOCKED is not one chorus-batch reads; it is
    ignored" at every submission, and sbatch's --export=ALL gave it to every shard and the merge, whose logs warned
    alike. It is chorus-batch's own (never warned of), and the script unsets it before it submits."""
    site, db, bin_dir, seen = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "bin", tmp_path / "sbatch-saw"
    (site / "000001").mkdir(parents=True)
    (site / "000001" / "a.txt").write_text("a")
    assert cli("run", "--site", str(site), "--db", str(db), "-q").returncode in (0, 1)  # (a manifest: the script upgrades)
    bin_dir.mkdir()
    _executable(bin_dir / "sbatch", f"#!/bin/sh\necho \"${{CHORUS_BATCH_SLURM_LOCKED-unset}}\" >> '{seen}'\n"
                                    "echo 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = cli("run", "--slurm", "--site", str(site), "--db", str(db), "--shards", "2", env=env, timeout=60)
    assert proc.returncode == 2 and "Invalid account" in proc.stderr, proc.stderr
    assert "CHORUS_BATCH_SLURM_LOCKED" not in proc.stdout + proc.stderr
    assert seen.read_text() == "unset\n"  # (the jobs' environment: sbatch's own)
    # a typo is still warned of, with the variables a user may set, not chorus-batch's own
    typo = cli("versions", "--db", str(db), env={"CHORUS_BATCH_SLURM_LOCK": "x"})
    assert "CHORUS_BATCH_SLURM_LOCK is not one chorus-batch reads" in typo.stderr, typo.stderr
    assert "CHORUS_BATCH_SLURM_LOCKED" not in typo.stderr and "TEST_PAUSE" not in typo.stderr


def test_a_run_slurm_through_a_linked_manifest_path_is_the_same_manifests(tmp_path):
    """`run --slurm --db link/m.sqlite` (a folder linked to the manifest's, as automount and project links make) beside
    one given the real path: each took its own `<db>.slurm.lock` and its jobs' --comment named another path, so neither
    was refused and the site was hashed twice. Both name the manifest by its real path now: `run --slurm` and the
    script submitted by hand are refused (exit 4) while the other holds it."""
    from chorus_batch.slurm import submission_lock

    site, real, bin_dir, called = tmp_path / "site", tmp_path / "real", tmp_path / "bin", tmp_path / "sbatch-called"
    for folder in (site, real, bin_dir):
        folder.mkdir()
    (tmp_path / "link").symlink_to(real)
    for tool in ("sbatch", "squeue", "scancel"):  # (a stand-in that says it was called and refuses: nothing queued)
        _executable(bin_dir / tool, f"#!/bin/sh\necho {tool} >> '{called}'\nexit 1\n")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    linked = tmp_path / "link" / "m.sqlite"
    script = tmp_path / "nightly.sbatch"
    script.write_text(slurm_script(site=str(site), db=str(linked), shards=2, cpus_per_task=1, python=sys.executable))
    assert f"--comment='chorus-batch manifest {real / 'm.sqlite'}'" in script.read_text()
    with submission_lock(str(real / "m.sqlite"), ["run", "--slurm"]):
        proc = cli("run", "--slurm", "--site", str(site), "--db", str(linked), "--shards", "2", env=env, timeout=30)
        by_hand = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, **env})
    assert proc.returncode == 4 and f"for the manifest {real / 'm.sqlite'}" in proc.stderr, proc.stderr
    assert by_hand.returncode == 4 and "another submission for the manifest" in by_hand.stderr, by_hand.stderr
    assert not called.exists() and not (tmp_path / "link" / "m.sqlite.slurm.lock").exists()


def test_a_submission_into_a_staging_folder_a_merge_is_reading_removes_nothing(slurm, stand_in, tmp_path):
    """The script removes the completion records (scan.json) an earlier submission's shards left in a --staging
    folder; it did so without the folder's lock, beside a merge reading those shards (the first of two submissions
    at once, or a merge run by hand), which then said "shard K/N is incomplete (it failed or is still running)". The
    clean-up takes the lock alone: refused (exit 4) while a merge or a shard holds it, nothing removed or queued."""
    from chorus_batch.errors import ManifestLocked
    from chorus_batch.shards import staging_lock

    python, _log = stand_in
    staging = tmp_path / "st"
    (staging / "shard-0-of-2").mkdir(parents=True)
    (staging / "shard-0-of-2" / "scan.json").write_text("{}")
    script = tmp_path / "nightly.sbatch"
    script.write_text(slurm_script(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), shards=2,
                                   cpus_per_task=1, python=str(python), staging=str(staging)))
    with staging_lock(staging, merge=True):  # (the merge reading the shards)
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
        with pytest.raises(ManifestLocked, match="a merge or a shard is running in the staging folder") as caught:
            submit(script.read_text())
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"a merge or a shard is running in the staging folder {staging}" in proc.stderr, proc.stderr
    assert "nothing was submitted" in proc.stderr and "nothing was submitted or committed" in str(caught.value)
    assert (staging / "shard-0-of-2" / "scan.json").exists() and not slurm.active()
    assert not Path(str(tmp_path / "m.sqlite") + ".slurm.lock").exists()  # (let go and removed with the script)
    slurm.wait_idle()


def test_a_second_submission_for_a_manifest_is_refused_while_the_firsts_jobs_are_queued(slurm, stand_in, tmp_path,
                                                                                          monkeypatch):
    """A plain `sbatch nightly.sbatch` took no lock and looked at nothing: submitted beside a `run --slurm` (or
    itself, twice at once), or while last night's jobs still ran (or jobs a `run --slurm` could not cancel, the
    controller down, its lock gone when it exited), it hashed the whole site again, and only the merge said so. The
    script holds the manifest's submission lock while it submits, and refuses (exit 4) while another submission's
    jobs for the manifest are queued or running, naming them with their scancel; `run --slurm` too."""
    from chorus_batch.errors import ManifestLocked
    from chorus_batch.slurm import submission_lock

    python, _log = stand_in
    monkeypatch.setenv("STAND_IN_HANG", "1")  # (the shards run on)
    db = tmp_path / "m.sqlite"
    script = tmp_path / "nightly.sbatch"
    script.write_text(slurm_script(site=str(tmp_path / "site"), db=str(db), shards=2, cpus_per_task=1,
                                   python=str(python)))
    with submission_lock(str(db), ["run", "--slurm"]):  # (a `run --slurm` submitting or following)
        held = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert held.returncode == 4 and f"another submission for the manifest {db} is being made" in held.stderr, \
        held.stdout + held.stderr
    # the holder named as `run --slurm` names it, not its record's JSON (boot_id, proc_start, jobs, \u-escapes)
    assert re.search(rf"pid {os.getpid()} on host \S+ \(user \S+\), started \d{{4}}-", held.stderr), held.stderr
    assert "boot_id" not in held.stderr and not slurm.active(), held.stderr
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    job = parse_submitted(first.stdout)
    try:
        # (a user's SQUEUE_* variables, which filter squeue's answer whatever its options say, hide nothing)
        second = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "SQUEUE_NAMES": "no-job-is-named-so",
                                     "SQUEUE_PARTITION": "no-such-partition"})
        assert second.returncode == 4, second.stdout + second.stderr
        said = second.stderr
        assert f"jobs of another submission for the manifest {db} are still queued or running" in said, said
        assert f"chorus-shard {job.array_job}_" in said and f"chorus-merge {job.merge_job} (pending)" in said, said
        assert f"`scancel {job.array_job} {job.merge_job}`" in said and "nothing was submitted" in said, said
        # `run --slurm` (its own lock taken: nothing holds it now, as after one whose scancel failed) is refused too
        with pytest.raises(ManifestLocked, match="still queued or running") as caught:
            submit_and_follow(script.read_text(), db=str(db), argv=["run", "--slurm"], out=lambda line: None)
        assert "nothing was submitted or committed" in str(caught.value)
        assert {row["id"].split("_")[0] for row in slurm.active()} == {job.array_job, job.merge_job}
        assert len(list(Path(str(db) + ".staging").iterdir())) == 1  # (the refused ones made no staging folder)
    finally:
        slurm.run(["scancel", job.array_job, job.merge_job])
        slurm.wait_idle()
    assert not Path(str(db) + ".slurm.lock").exists() and not Path(str(db) + ".slurm.lock.json").exists()


def test_a_run_slurm_killed_while_following_keeps_the_next_from_submitting_beside_its_jobs(slurm, stand_in, tmp_path):
    """A `run --slurm` killed (SIGKILL: the OOM killer, a closed login session's kill) while it followed its jobs let
    go of the manifest's submission lock but cancelled nothing: the next `run --slurm` submitted a second array beside
    the first's, still running (the site hashed twice; with one --staging, each array's shards refused by the other's
    locks, or one merge refused as stale). Its record names its jobs: the next one asks squeue, is refused while they
    run (exit 4, naming them, with their scancel), and goes on once they have ended."""
    from chorus_batch.errors import ManifestLocked
    from chorus_batch.slurm import submission_lock

    python, _log = stand_in
    db = tmp_path / "m.sqlite"
    script = tmp_path / "job.sbatch"
    script.write_text(slurm_script(site=str(tmp_path / "site"), db=str(db), shards=2, cpus_per_task=1,
                                   python=str(python), staging=str(tmp_path / "st")))
    follower = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom chorus_batch.slurm import submit_and_follow\n"
         "sys.exit(submit_and_follow(open(sys.argv[1]).read(), poll_s=0.3, db=sys.argv[2], argv=['run', '--slurm']))",
         str(script), str(db)], env={**os.environ, "STAND_IN_HANG": "1"}, stdout=subprocess.PIPE, text=True)
    record = Path(str(db) + ".slurm.lock.json")
    try:
        for _ in range(300):
            if record.exists() and "jobs" in record.read_text():
                break
            time.sleep(0.1)
        jobs = json.loads(record.read_text())["jobs"]
    finally:
        follower.kill()
        follower.communicate(timeout=30)
    try:
        with pytest.raises(ManifestLocked) as refused:
            with submission_lock(str(db), ["run", "--slurm"]):
                pass
        said = str(refused.value) + (refused.value.fix or "")
        assert "was stopped without cancelling its Slurm jobs" in said and "submitted nothing" in said, said
        assert f"scancel {jobs[0]} {jobs[1]}" in said and jobs[0] in said, said
        assert f"pid {follower.pid}" in said, said
    finally:
        slurm.run(["scancel", *jobs])
    assert slurm.wait_job(jobs[0], timeout=60) == "CANCELLED"
    slurm.wait_job(jobs[1], timeout=60)
    with submission_lock(str(db), ["run", "--slurm"]):  # their jobs ended: the next one goes on
        assert "jobs" not in record.read_text()
    slurm.wait_idle()


def test_a_named_pipe_in_place_of_the_submissions_record_does_not_hold_run_slurm(tmp_path):
    """`run --slurm` read the record an earlier submission left beside its lock (<db>.slurm.lock.json) as a file: a
    named pipe there held it, before anything was submitted, until someone wrote into it. It is read without waiting,
    as the manifest lock's details are, and one that is no ordinary file names no jobs."""
    record = tmp_path / "m.sqlite.slurm.lock.json"
    os.mkfifo(record)
    code = ("import sys; from pathlib import Path; from chorus_batch.slurm import _jobs_left_running; "
            "p = Path(sys.argv[1]); _jobs_left_running(p, p.with_suffix(''), 'm.sqlite'); print('returned')")
    out = subprocess.run([sys.executable, "-c", code, str(record)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "returned", out.stderr


def test_a_shard_task_does_not_write_over_another_manifests_shard_in_a_shared_staging_folder(slurm, small_site, tmp_path,
                                                                                             monkeypatch):
    """Two sites' `run --slurm` given one --staging at the same time, with the same --shards: both wrote
    shard-K-of-N; the second site's shards replaced the first's, the second's merge committed and removed them, and
    the first's merge, run again, was told its shards were "merged already" (its manifest had no version at all).
    A task of a submission now refuses a shard of another manifest written since it was queued: its merge is
    cancelled, the other manifest's shard stays and merges."""
    first, second = small_site
    staging, ours, theirs = tmp_path / "shared", tmp_path / "ours.sqlite", tmp_path / "theirs.sqlite"
    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    script = slurm_script(site=str(first), db=str(ours), shards=1, cpus_per_task=1, staging=str(staging))
    assert script.count(" --array=0-0 ") == 1
    # the array queued held: the other submission's shard is written meanwhile
    job = submit(script.replace(" --array=0-0 ", " --hold --array=0-0 "))
    theirs_shard = cli("run", "-q", "--site", str(second), "--db", str(theirs), "--workers", "1", "--shard", "0/1",
                       "--staging", str(staging))
    assert theirs_shard.returncode == 0, theirs_shard.stderr
    record = (staging / "shard-0-of-1" / "scan.json").read_bytes()
    assert slurm.run(["scontrol", "release", job.array_job]).returncode == 0
    assert slurm.wait_job(job.array_job, timeout=300) == "FAILED", _logs(job)
    assert slurm.wait_job(job.merge_job, timeout=120) == "CANCELLED", _logs(job)
    log = (staging / "logs" / f"chorus-shard-{job.array_job}_0.out").read_text()
    assert f"holds that shard of another manifest, {theirs}" in log and "a --staging of their own" in log, log
    assert "Traceback" not in log
    assert (staging / "shard-0-of-1" / "scan.json").read_bytes() == record  # theirs, as written
    # the other manifest's merge in the same folder writes its merge.exit there: not this submission's outcome
    (staging / "merge.exit").write_text("0\n")
    lines: list[str] = []
    assert follow(job, poll_s=0.5, out=lines.append) == 2, lines
    assert not any("exited with code 0" in line for line in lines), lines
    assert not ours.exists() or query(ours, "SELECT count(*) FROM versions") == [(0,)]
    ref, ref_codes = _reference(tmp_path, second)
    merged = cli("run", "-q", "--site", str(second), "--db", str(theirs), "--merge", str(staging), timeout=300)
    assert merged.returncode == ref_codes[0], merged.stdout + merged.stderr
    assert _manifest_view(theirs) == _manifest_view(ref)
    slurm.wait_idle()


def test_more_shards_than_the_site_has_person_folders_is_said(slurm, small_site, tmp_path, monkeypatch):
    """`--shards 1000` on a site of a few person folders: 990-odd jobs queued, each starting Python to list nothing
    (over 5 minutes on one node for a site a single run takes a second), without a word. Said, with the --shards
    that does the same work; the default on a small site stays quiet."""
    first, _second = small_site
    tops = len(list(first.iterdir()))
    db = tmp_path / "m.sqlite"
    many = cli("slurm-script", "--site", str(first), "--db", str(db), "--shards", "1000", env=slurm.env)
    assert many.returncode == 0, many.stderr
    assert f"warning: --shards 1000: the site's {tops} top-level folders fall in " in many.stderr, many.stderr
    assert f"give --shards {tops} or fewer" in many.stderr and "Traceback" not in many.stderr
    few = cli("slurm-script", "--site", str(first), "--db", str(db), env=slurm.env)
    assert few.returncode == 0 and "warning" not in few.stderr, few.stderr


def test_a_submission_into_a_staging_folder_with_another_manifests_unmerged_shards_submits_nothing(small_site,
                                                                                                   tmp_path):
    """One --staging given to two manifests one after the other: the second's submission removed the completion
    records of the first's shards, not merged yet, and that manifest's merge (pending, or run again by hand) found
    every shard "incomplete", its site to be hashed again. It is refused (exit 4), naming them and what to do, and
    removes nothing; once that manifest merged them, the next submission goes ahead."""
    first, second = small_site
    staging, ours, theirs = tmp_path / "shared", tmp_path / "ours.sqlite", tmp_path / "theirs.sqlite"
    bin_dir, called = tmp_path / "bin", tmp_path / "sbatch-called"
    bin_dir.mkdir()
    for tool in ("sbatch", "squeue", "scancel"):  # (a stand-in that says it was called and refuses: nothing queued)
        _executable(bin_dir / tool, f"#!/bin/sh\necho {tool} >> '{called}'\n[ {tool} = squeue ] || exit 1\n")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for k in (0, 1):
        shard = cli("run", "-q", "--site", str(second), "--db", str(theirs), "--workers", "1", "--shard", f"{k}/2",
                    "--staging", str(staging))
        assert shard.returncode == 0, shard.stderr
    proc = cli("run", "--slurm", "--site", str(first), "--db", str(ours), "--shards", "2", "--staging", str(staging),
               env=env, timeout=60)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert (f"the staging folder {staging} holds shards of another manifest, {theirs} (their --db), not merged yet "
            "(shard-0-of-2, shard-1-of-2)") in proc.stderr, proc.stderr
    assert f"--db {theirs} --workers 1 --merge {staging}" in proc.stderr and "give --staging another" in proc.stderr
    assert "sbatch" not in (called.read_text() if called.exists() else "")
    assert all((staging / f"shard-{k}-of-2" / "scan.json").exists() for k in (0, 1))
    merged = cli("run", "-q", "--no-validate", "--site", str(second), "--db", str(theirs), "--merge", str(staging))
    assert merged.returncode in (0, 1), merged.stderr
    after = cli("run", "--slurm", "--site", str(first), "--db", str(ours), "--shards", "2", "--staging", str(staging),
                env=env, timeout=60)
    assert after.returncode == 2 and "sbatch" in called.read_text(), after.stdout + after.stderr
    assert not (staging / "shard-0-of-2" / "scan.json").exists()  # (merged: its record cleared as before)


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="a file system that takes any bytes as a name")
def test_a_person_folder_not_named_in_utf8_is_no_internal_error_in_slurm_script(tmp_path, capsys):
    """A person folder copied from a Windows share with its Latin-1 name (`M\\xfcller`, a cron line's LANG=C) was an
    internal UnicodeEncodeError, exit 3, in slurm-script and `run --slurm` (the check of how many shards list
    nothing hashed each top-level name as UTF-8); the shards' own walk reports it as non_utf8_name."""
    from chorus_batch.cli import main

    os.makedirs(os.fsencode(tmp_path / "site") + b"/M\xfcller/Waveforms")
    code = main(["slurm-script", "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"), "--shards", "200"])
    out = capsys.readouterr()
    assert code == 0 and "internal error" not in out.err and "#SBATCH" in out.out, out.err
