"""The tests' command lines, started by fork from a parent that has imported the command line's libraries once.

Each `python -m chorus_batch ...` of a test spent most of its time importing polars, pyarrow and DuckDB (about
0.6 CPU-s of each call; some 800 calls a CI run, a fifth of its CPU). A zygote process per pytest process imports
them once, single-threaded, and forks a fresh process for each command: the command still runs in its own process,
with its own arguments, working folder, environment, standard streams, exit code and signals, from a clean
imported state. Environments that change what an import does (the locale, PYTHON*, the libraries' thread and
allocator settings) are run as a plain subprocess instead, as are callers needing anything but `cli()`'s
capture (see conftest.cli).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# An environment variable with one of these prefixes is read while a library loads (or by the interpreter at
# start): a command whose value differs from the zygote's runs in a subprocess of its own.
IMPORT_TIME = ("PYTHON", "LANG", "LC_", "POLARS_", "_RJEM_", "RAYON_", "OMP_", "OPENBLAS", "MKL_", "ARROW_",
               "DUCKDB", "MALLOC_", "LD_", "TZ")
PRELOAD = ("chorus_batch.cli", "polars", "pyarrow", "pyarrow.parquet", "duckdb", "chorus_batch.review",
           "chorus_batch.store", "chorus_batch.config", "chorus_batch.pipeline")
MAX_REQUEST = 1 << 20


def import_time_environment(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(IMPORT_TIME)}


# -- the zygote process ------------------------------------------------------------------------------------------


def serve(path: str) -> None:
    """Import, listen on the socket `path`, fork a supervisor per request; ends with the process that started it."""
    parent = os.getppid()
    here = str(Path(__file__).parent)  # (put first by the -c that started it: not where a command's imports look)
    while here in sys.path:
        sys.path.remove(here)
    from chorus_batch.cli import return_freed_memory

    return_freed_memory()  # as the command line's entry does, before polars loads
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    listener.settimeout(1.0)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the pytest process that started it is gone (killed: no atexit)
                os._exit(0)
            continue
        conn.setblocking(True)
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _supervise(conn)
        conn.close()


def _supervise(conn: socket.socket) -> None:
    """In a fork of the zygote: fork the command, send its pid, wait for it, send its wait status."""
    code = 0
    try:
        message, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            conn.close()
            _command(request, fds)
        for fd in fds:
            os.close(fd)
        conn.send(json.dumps({"pid": pid}).encode())
        _, status = os.waitpid(pid, 0)
        conn.send(json.dumps({"status": status}).encode())
    except BaseException:  # the client is gone or the request is bad: nothing more to tell anyone
        code = 1
    os._exit(code)


def drop_permission_override() -> None:
    """This process's root overrides of file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped from its
    bounding, effective, permitted and inheritable sets: what util-linux `setpriv --inh-caps=-dac_override,
    -dac_read_search --bounding-set=-dac_override,-dac_read_search` drops before it starts a command as root."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    caps = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH (linux/capability.h)
    for cap in caps:
        if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two words of (effective, permitted, inheritable): caps 0-31 in the first
    if libc.capget(header, data):
        raise OSError(ctypes.get_errno(), "capget failed")
    for i in range(3):
        data[i] &= ~sum(1 << cap for cap in caps) & 0xFFFFFFFF
    if libc.capset(header, data):
        raise OSError(ctypes.get_errno(), "capset failed")


def _command(request: dict, fds: list[int]) -> None:
    """In the command's own process: its streams, folder, environment and arguments, then the real entry."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("drop_override"):
            drop_permission_override()
        sys.argv = [str(Path(importlib.import_module("chorus_batch").__file__).with_name("__main__.py")),
                    *request["argv"]]
        sys.orig_argv = [sys.executable, "-m", "chorus_batch", *request["argv"]]
        from chorus_batch.__main__ import entry

        entry()  # leaves by os._exit
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(code)


# -- the pytest side ---------------------------------------------------------------------------------------------


class _Zygote:
    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="zygote-")
        self.path = os.path.join(self.folder, "socket")
        self.environment = import_time_environment(dict(os.environ))
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                                   f"import zygote; zygote.serve({self.path!r})"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd=self.folder)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the tests' command-line zygote did not start")
        atexit.register(self.close)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def run(self, argv: list[str], cwd: str, env: dict[str, str], timeout: float,
            drop_override: bool = False) -> subprocess.CompletedProcess | None:
        command = [sys.executable, "-m", "chorus_batch", *argv]  # (as subprocess.run would name it)
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        stdin = os.open(os.devnull, os.O_RDONLY)
        deadline = time.monotonic() + timeout
        with out, err, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            try:
                try:
                    conn.connect(self.path)
                except OSError:  # (the zygote ended meanwhile: the caller runs a plain subprocess)
                    return None
                socket.send_fds(conn, [json.dumps({"argv": argv, "cwd": cwd, "env": env,
                                                        "drop_override": drop_override}).encode()],
                                [stdin, out.fileno(), err.fileno()])
            finally:
                os.close(stdin)
            conn.settimeout(timeout)
            pid = json.loads(conn.recv(MAX_REQUEST))["pid"]
            try:
                conn.settimeout(max(0.0, deadline - time.monotonic()))
                reply = conn.recv(MAX_REQUEST)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):  # (it ended at the deadline: its supervisor reaped it)
                    os.kill(pid, signal.SIGKILL)
                conn.settimeout(10)
                conn.recv(MAX_REQUEST)
                raise subprocess.TimeoutExpired(command, timeout, _read(out), _read(err)) from None
            if not reply:
                raise RuntimeError(f"the tests' command-line zygote lost the command {argv}")
            status = json.loads(reply)["status"]
            return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), _read(out), _read(err))


class Started:
    """A command a fork of the zygote runs with the caller's own standard streams (pipes, /dev/full): its pid, and
    its exit code once it ends (as Popen.wait gives it)."""

    def __init__(self, conn: socket.socket, pid: int, argv: list[str]) -> None:
        self.conn, self.pid, self.argv, self.returncode = conn, pid, argv, None

    def wait(self, timeout: float) -> int:
        if self.returncode is None:
            self.conn.settimeout(timeout)
            try:
                reply = self.conn.recv(MAX_REQUEST)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(self.argv, timeout) from None
            self.conn.close()
            if not reply:
                raise RuntimeError(f"the tests' command-line zygote lost the command {self.argv}")
            self.returncode = os.waitstatus_to_exitcode(json.loads(reply)["status"])
        return self.returncode


def start(argv: list[str], cwd: str, env: dict[str, str], streams: list[int]) -> Started | None:
    """The command started by a fork of this pytest process's zygote with `streams` (stdin, stdout, stderr file
    descriptors, the caller's: it closes its own copies when it likes), or None where it must be a plain subprocess.
    Not for pipes: the command's text streams are the zygote's, which took a stream for seekable or not as it started
    (a pipe where pytest's stderr was a file fails in reconfigure with ESPIPE)."""
    zygote = _running(env)
    if zygote is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(zygote.path)
    except OSError:
        conn.close()
        return None
    socket.send_fds(conn, [json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode()], streams)
    conn.settimeout(60)
    return Started(conn, json.loads(conn.recv(MAX_REQUEST))["pid"], [sys.executable, "-m", "chorus_batch", *argv])


def _read(file) -> str:
    """As subprocess.run(text=True) reads a stream: the locale's encoding, universal newlines."""
    file.seek(0)
    return io.TextIOWrapper(io.BytesIO(file.read())).read()


_zygote: _Zygote | None = None
_starting = threading.Lock()


def _running(env: dict[str, str]) -> _Zygote | None:
    """This pytest process's zygote, started if need be; None where a command with `env` must be a plain subprocess
    (not POSIX, or an environment that changes what is imported)."""
    global _zygote
    started_with = _zygote.environment if _zygote else import_time_environment(dict(os.environ))
    if os.name != "posix" or import_time_environment(env) != started_with:
        return None
    with _starting:
        if _zygote is None or _zygote.process.poll() is not None:
            _zygote = _Zygote()
        return _zygote


def run(argv: list[str], cwd: str, env: dict[str, str], timeout: float,
        drop_override: bool = False) -> subprocess.CompletedProcess | None:
    """The command run by a fork of this pytest process's zygote, or None where it must be a plain subprocess.
    `drop_override`: without root's overrides of file permissions (drop_permission_override)."""
    zygote = _running(env)
    if zygote is None:
        return None
    return zygote.run(argv, cwd, env, timeout, drop_override)
