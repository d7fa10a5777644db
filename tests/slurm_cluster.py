"""A real single-node Slurm cluster for the tests, started by the tests themselves: no mocks, no skips.

Fixture (session-scoped; conftest.py imports it, so every test file can ask for it):

``slurm`` -> :class:`SlurmCluster`
    Debian bookworm's ``slurm-wlm`` 22.05 and ``munge`` 0.5.15 (``scripts/test`` installs them with
    apt when ``sbatch`` or ``slurmctld`` is missing). Started here, in this order, all as child
    processes in the foreground (``-F`` / ``-D``), stopped (SIGTERM, then wait) at session end:

    1. ``munged -F`` as the ``munge`` user (when the tests run as root) with its own key
       (``mungekey --create``), socket, pid, seed and log in a fresh ``/tmp/chorus-munge-*``
       folder owned by ``munge`` (mode 0755: munged refuses a key or socket folder others may
       write, and pytest's own tmp folders are root-only, so munge could not reach them).
       ``AuthInfo=socket=...`` in slurm.conf points Slurm at that socket, so the machine's
       /run/munge and /etc/munge are not touched.
    2. ``slurmctld -D -i`` and ``slurmd -D`` with a generated ``slurm.conf`` in a temporary folder:
       ``SlurmUser=root``, ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``,
       ``JobAcctGatherType=jobacct_gather/none``, ``AccountingStorageType=accounting_storage/none``
       (no slurmdbd: no ``sacct``; finished jobs stay visible to ``squeue --states=all`` and
       ``scontrol show job`` for ``MinJobAge`` = 300 s), ``SelectType=select/cons_tres`` with
       ``CR_Core``, one node named ``hostname -s`` at ``NodeAddr=127.0.0.1`` with CPUs=2 (at most
       the machine's) and RealMemory a bit under the machine's, one default partition ``debug``,
       ``VSizeFactor=1000`` (a job's --mem times 10 would be its address-space limit; with memory not consumable
       no job gets one, but `scontrol show config` says it, which the Slurm script checks --mem against),
       free ports for ``SlurmctldPort``/``SlurmdPort``, state, spool, pid and log files in the
       temporary folder. The node is idle within a second or two.

    Clients find it through ``SLURM_CONF``: ``.env`` is ``{"SLURM_CONF": ...}`` (pass
    ``{**os.environ, **slurm.env}`` to subprocesses; the jobs inherit the submitting environment).
    ``.run(cmd)`` runs a command with that environment (text output captured), ``.squeue()`` lists
    the jobs it knows (finished ones too) as dicts, ``.wait_idle()`` waits until no job is pending
    or running, ``.wait_job(id)`` until one job has finished. Tests cancel their own jobs; at session
    end every job is cancelled before the daemons stop.

    Without the binaries the fixture FAILS (never skips) and says to run ``scripts/test``.
    It needs root (slurmd starts jobs as the submitting user; munged is started as ``munge``).

NOT covered: more than one node, a shared file system between nodes, accounting (slurmdbd, sacct,
fair share), cgroups (memory limits are not enforced: ``--mem`` is passed but with CR_Core not
consumed), preemption, requeue after node failure, other Slurm releases than 22.05.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from services import running
from services import _kill, _tail, free_port

BINARIES = ("munged", "mungekey", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
START_TIMEOUT = 60.0
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def _require_slurm() -> dict[str, str]:
    found = {name: _which(name) for name in BINARIES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"Slurm and munge are not installed ({', '.join(missing)} not found). Run scripts/test (it "
                    "installs slurm-wlm and munge with apt), or `apt-get install slurm-wlm munge`.", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the Slurm test cluster needs root (slurmd starts jobs as their user, munged runs as munge); "
                    "run the tests as root, e.g. in the CI container", pytrace=False)
    return found


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 2048


class SlurmCluster:
    """munged + slurmctld + slurmd on this machine; see the module docstring."""

    def __init__(self, base: Path):
        self.bin = _require_slurm()
        self.base = Path(base)
        self.conf = self.base / "slurm.conf"
        self.state = self.base / "state"
        self.spool = self.base / "spool"
        self.hostname = socket.gethostname().split(".")[0]
        self.cpus = min(2, os.cpu_count() or 1)
        self.memory_mb = max(256, int(_memory_mb() * 0.9))
        self.ctld_port = free_port()
        self.slurmd_port = free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = free_port()
        self.munge_dir: Path | None = None
        self.munge_socket: Path | None = None
        self.env = {"SLURM_CONF": str(self.conf)}
        self._procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ start / stop
    def start(self) -> None:
        for folder in (self.state, self.spool):
            folder.mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._write_conf()
        self._spawn("slurmctld", [self.bin["slurmctld"], "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run(["scontrol", "ping"]).stdout.count("UP") > 0, "slurmctld to answer `scontrol ping`",
                   "slurmctld")
        self._spawn("slurmd", [self.bin["slurmd"], "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, f"node {self.hostname} to be idle (sinfo)", "slurmd")

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        self.munge_dir = Path(tempfile.mkdtemp(prefix="chorus-munge-"))
        os.chmod(self.munge_dir, 0o755)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        key = self.munge_dir / "munge.key"
        subprocess.run([self.bin["mungekey"], "--create", f"--keyfile={key}"], check=True, capture_output=True)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o600)
        self.munge_socket = self.munge_dir / "munge.socket"
        log = self.munge_dir / "munged.log"
        args = [self.bin["munged"], "-F", f"--key-file={key}", f"--socket={self.munge_socket}",
                f"--pid-file={self.munge_dir / 'munged.pid'}", f"--log-file={log}",
                f"--seed-file={self.munge_dir / 'munged.seed'}"]
        self._spawn("munged", args, user=munge.pw_uid, group=munge.pw_gid, log=self.base / "munged.out")

        def answers() -> bool:
            proc = subprocess.run([self.bin["munge"], "-n", "-S", str(self.munge_socket)], capture_output=True)
            return proc.returncode == 0
        self._wait(answers, "munged to answer on its socket", "munged", log=log)

    def _write_conf(self) -> None:
        b = self.base
        self.conf.write_text(f"""\
# Generated by tests/slurm_cluster.py: one node, no accounting database, no cgroups.
ClusterName=chorustest
SlurmctldHost={self.hostname}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
VSizeFactor=1000
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
StateSaveLocation={b / 'state'}
SlurmdSpoolDir={b / 'spool'}
SlurmctldPidFile={b / 'slurmctld.pid'}
SlurmdPidFile={b / 'slurmd.pid'}
SlurmctldLogFile={b / 'slurmctld.log'}
SlurmdLogFile={b / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, args: list[str], *, user: int | None = None, group: int | None = None,
               log: Path | None = None) -> None:
        log = log or self.base / f"{name}.out"
        with open(log, "ab") as out:
            self._procs[name] = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.base,
                env={**os.environ, **self.env}, user=user, group=group, extra_groups=[] if user is not None else None)

    def _wait(self, ready, what: str, name: str, *, log: Path | None = None, timeout: float = START_TIMEOUT) -> None:
        proc = self._procs[name]
        log = log or self.base / f"{name}.log"
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                self.stop()
                pytest.fail(f"{name} exited with code {proc.returncode} while waiting for {what}; log {log}:\n"
                            f"{_tail(log)}\n{_tail(self.base / f'{name}.out', 2000)}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; log {log}:\n{_tail(log)}", pytrace=False)
            time.sleep(0.1)

    def _node_idle(self) -> bool:
        proc = self.run(["sinfo", "--noheader", "--format=%T"])
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (SIGTERM, wait; SIGKILL after 10 s)."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self.run(["scancel", "--user=root"])
        for name in ("slurmd", "slurmctld", "munged"):
            _kill(self._procs.pop(name, None))
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None

    # ------------------------------------------------------------------ clients
    def run(self, cmd: list[str] | str, *, timeout: float = 60, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
        """A command (a list, or a string for bash -c) with SLURM_CONF set; text output captured."""
        args = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        env = {**os.environ, **self.env, **kwargs.pop("env", {})}
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd!r} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def squeue(self, *jobs: str) -> list[dict[str, str]]:
        """Every job Slurm knows (also finished ones, for MinJobAge), array tasks one per row:
        [{"id": "12_3", "name": ..., "state": "COMPLETED", "reason": ...}, ...]; or only ``jobs``."""
        args = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%j|%T|%r"]
        if jobs:
            args.append("--jobs=" + ",".join(jobs))
        proc = self.run(args)
        rows = []
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                rows.append(dict(zip(("id", "name", "state", "reason"), parts)))
        return rows

    def active(self) -> list[dict[str, str]]:
        return [row for row in self.squeue() if row["state"] not in _FINISHED]

    def wait_idle(self, timeout: float = 120) -> None:
        """Until no job is pending or running (finished ones may still be listed)."""
        deadline = time.monotonic() + timeout
        while self.active():
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still active after {timeout:.0f}s: {self.active()}\n{self.logs()}")
            time.sleep(0.2)

    def wait_job(self, job_id: str, timeout: float = 120) -> str:
        """Until the job (every task of an array) has finished; its state (an array: the worst task's)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [row for row in self.squeue(job_id) if row["id"] == job_id or row["id"].startswith(job_id + "_")]
            if rows and all(row["state"] in _FINISHED for row in rows):
                states = {row["state"] for row in rows}
                return "COMPLETED" if states == {"COMPLETED"} else sorted(states - {"COMPLETED"})[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not finished after {timeout:.0f}s: {rows}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n{_tail(self.base / name, 3000)}" for name in ("slurmctld.log", "slurmd.log"))


_FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
             "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    yield from running(SlurmCluster(tmp_path_factory.mktemp("slurm")))
