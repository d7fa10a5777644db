"""Worker processes: a pool that dies with its caller and is stopped at once on a signal.

Listing, hashing and header reading of local files are bound by per-file Python work under
the GIL (measured: two threads slower than one), so they run in worker processes. On Linux
the workers are forked: cheap to start, and no re-import of the caller's main module (spawn
and forkserver re-run an unguarded script). Forking a process whose polars/duckdb threads
exist is safe here because the work functions call only the standard library (and pydicom,
wfdb's grammar or pyarrow's CSV reader for headers, all fork-safe), never polars. Elsewhere: spawn.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .errors import STOP_SIGNALS, UsageError, WorkerDied, slurm_address_space, soft_limit

# The standard library only: the early listing (walk.py) starts a pool before the caller has loaded polars.


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM, SIGHUP and SIGINT while a native library is first imported, then act on them: DuckDB's module
    initialisation (nanobind) runs Python code, and the Stopped or KeyboardInterrupt a signal raised there aborted
    the process ("Critical nanobind error", SIGABRT: no message, an unfinished `runs` row). Python runs signal
    handlers in the main thread only, so swapping the handlers holds them whichever thread received the signal."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    stops = [getattr(signal, name) for name in (*STOP_SIGNALS, "SIGINT") if hasattr(signal, name)]
    before = {signum: signal.signal(signum, lambda signum, _frame: held.append(signum)) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if held:
            handler = before[held[0]]
            if callable(handler):
                handler(held[0], None)  # the handler of the first signal held: it raises (Stopped, KeyboardInterrupt)
            elif handler == signal.SIG_DFL:  # (a library caller without handlers): what the signal would have done
                # raise_signal, not os.kill(getpid()): on Windows os.kill with a signal other than CTRL_C_EVENT or
                # CTRL_BREAK_EVENT is TerminateProcess with the signal's number as exit code (Python docs, os.kill)
                signal.raise_signal(held[0])


def _affinity() -> int:
    """The CPUs this process may run on (its affinity; the machine's count where there is none: not Linux)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(environ: Mapping[str, str] | None = None) -> int:
    """The CPUs this process may run on: its affinity (`taskset`, a Slurm or cgroup cpuset), at most the
    job's `SLURM_CPUS_PER_TASK` (a Slurm job whose CPUs are not bound still has only those). os.cpu_count() is
    the machine's: a `--cpus-per-task=1` job on a 64-core node started 16 workers on its one CPU."""
    environ = os.environ if environ is None else environ
    cpus = _affinity()
    slurm = (environ.get("SLURM_CPUS_PER_TASK") or "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        cpus = min(cpus, int(slurm))
    elif slurm:  # (Slurm sets a number: this one was set by hand or a script, and is not taken)
        _say_ignored_cpus(slurm, cpus)
    return cpus


_said_ignored: set[str] = set()


def _say_ignored_cpus(value: str, cpus: int) -> None:
    """Once per value: an ignored SLURM_CPUS_PER_TASK was silent, and the run used every CPU it may run on."""
    if value not in _said_ignored:
        import logging

        from .units import plural

        _said_ignored.add(value)
        logging.getLogger("chorus_batch").warning(
            f"SLURM_CPUS_PER_TASK is {value!r}, not a number of CPUs: ignored, using the {plural(cpus, 'CPU')} this process "
            "may run on; unset it or set it to the job's CPUs")


def cap_library_threads(environ: dict[str, str] | None = None) -> None:
    """POLARS_MAX_THREADS from usable_cpus(), unless the site set it, where the job's SLURM_CPUS_PER_TASK allows fewer
    CPUs than the process may run on (a cluster that does not bind a job's CPUs: TaskPlugin=task/none). Polars sizes its
    pool by the affinity alone: a `--cpus-per-task=1` job on a 64-core node ran 64 polars threads on its one CPU, beside
    the other jobs there. Called before the first query (the pool is made then); worker processes inherit it."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    if (environ.get("POLARS_MAX_THREADS") or "").strip():
        return
    # An empty one is unset, as README says of every variable it names: polars read `POLARS_MAX_THREADS=` (a batch
    # script's `$THREADS` left unset) as "illegal value ''" (a Python UserWarning in the run's output) and took every
    # CPU, and a Slurm job's SLURM_CPUS_PER_TASK was not applied because the variable was "set".
    environ.pop("POLARS_MAX_THREADS", None)
    cpus = usable_cpus(environ)
    if cpus < _affinity():
        environ["POLARS_MAX_THREADS"] = str(cpus)


def library_defaults(environ: dict[str, str] | None = None) -> None:
    """Settings of libraries a command loads, each unless the user set it (an empty one is unset, as README says of
    every variable it names); worker processes inherit them:
    - OPENBLAS_NUM_THREADS=1: numpy loads with pyarrow in every run, and its OpenBLAS starts a thread per CPU and their
      buffers as it loads (10 ms of CPU on 2 cores; 63 threads on a 64-core node), for linear algebra no command does
      (the report's plots count and bin);
    - PYDANTIC_DISABLE_PLUGINS=__all__: pydantic looks for plugins (every installed distribution's entry points: 7 ms
      of CPU with 150 installed) as it builds the settings' models, which have none to serve."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    for name, value in (("OPENBLAS_NUM_THREADS", "1"), ("PYDANTIC_DISABLE_PLUGINS", "__all__")):
        if not (environ.get(name) or "").strip():
            environ[name] = value


def default_workers() -> int:
    """Hashing threads / listing and header-reading processes: the CPUs this process may use (usable_cpus),
    at most 16 (past that a shared file system, not the CPU, is the limit)."""
    return min(usable_cpus(), 16)


# Descriptors a run holds open (measured at 20 + 2 per worker process: its pipes and sentinel), with room to spare;
# one worker is the caller itself (measured: 16 suffice).
FDS_BASE, FDS_PER_WORKER, FDS_ALONE = 32, 3, 24


def _fds_needed(workers: int) -> int:
    return FDS_ALONE if workers <= 1 else FDS_BASE + FDS_PER_WORKER * workers


def ensure_open_files(workers: int) -> None:
    """Enough open files for `workers` worker processes: the soft limit is raised towards the hard one if need be
    (as `ulimit -n` could); below that, a usage error before any work. A pool that could not start its workers
    (EMFILE) failed mid-run, and said "cannot open the manifest" when the bookkeeping could not open it either."""
    try:
        import resource
    except ImportError:  # (not POSIX)
        return
    need = _fds_needed(workers)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, min(hard, 1024)), hard))
            return
    limit = min(soft, hard)
    fewer = max((w for w in range(1, workers) if _fds_needed(w) <= limit), default=None)
    raise UsageError(
        f"the open-file limit is {limit}: {workers} worker process{'es need' if workers > 1 else ' needs'} at least "
        f"{need} open files",
        where="the open-file limit (`ulimit -n`) of the shell, cron or Slurm job that started this command",
        fix=f"raise it to 1024 or more (`ulimit -n 1024` before the command; its hard limit, `ulimit -Hn`, is {hard})"
            + (f", or pass --workers {fewer} (workers in [run])" if fewer else ""))


# The address space a run maps (VmPeak, measured at 3.1 GiB for 1 to 16 workers and a site of 100,000 files on the
# 2-core development machine, while it resides in about 430 MiB): polars', pyarrow's and DuckDB's code, and what their
# threads and allocators reserve (pyarrow's mimalloc alone 1 GiB), with room to spare.
ADDRESS_SPACE_NEEDED = 4 << 30


def ensure_address_space(command: str = "run") -> None:
    """An address-space limit (`ulimit -v`, RLIMIT_AS; Slurm passes on the submitting shell's) below what a run maps
    is a usage error before any work. Under it an allocation in polars' (Rust) code failed, which aborts the process:
    exit 134, "memory allocation of 8388608 bytes failed" and a Rust backtrace, the `runs` row left unfinished.
    `validate` and `upload` load the same libraries and start their threads (VmPeak 2.6 GiB for a 51-file site, as a
    run's): under 1 GiB `validate` aborted so (exit 134, no message), under 2 GiB `upload --dry-run` was told of the
    process limit (`ulimit -u`) it had not reached. `command` names the command refused."""
    soft = soft_limit("RLIMIT_AS")
    if soft is None or soft >= ADDRESS_SPACE_NEEDED:
        return
    slurm = slurm_address_space(soft)
    if slurm is not None:  # the job's --mem made it (VSizeFactor): "remove it, bound memory with --mem" sent it round
        memory, percent = slurm
        needed = -(-ADDRESS_SPACE_NEEDED * 100 // (percent << 20))  # MiB of --mem whose VSizeFactor share is enough
        raise UsageError(
            f"the address-space limit is {soft // 2**20} MiB, this Slurm job's {memory} MiB of memory times {percent}%: "
            f"Slurm sets that when the cluster has VSizeFactor={percent}; `{command}` maps about 3 GiB of address space (the libraries' code "
            "and what their threads and allocators reserve, most of it never used), and a native library that runs "
            "out of it aborts the process without a word; nothing was done",
            where=f"Slurm job {os.environ.get('SLURM_JOB_ID')}: its memory (--mem) and the cluster's VSizeFactor "
                  "(`scontrol show config | grep VSizeFactor`)",
            fix=f"give the job --mem={needed}M or more (`chorus-batch slurm-script --mem {needed}M`, or `run --slurm "
                f"--mem {needed}M`, for every shard and the merge): `ulimit -v unlimited` cannot lift a limit Slurm "
                "set; or ask the cluster's administrators (if it is a `ulimit -v` of the job's script or of the shell "
                "that submitted it instead, remove that)")
    raise UsageError(
        f"the address-space limit (`ulimit -v`) is {soft // 2**20} MiB: `{command}` maps about 3 GiB of address space (the "
        "libraries' code and what their threads and allocators reserve, most of it never used: a run of 100,000 files "
        "resides in about 430 MiB), and a native library that runs out of it aborts the process without a word",
        where="the address-space limit of the shell, cron or Slurm job that started this command (a Slurm job has "
              "the limits of the shell that submitted it)",
        fix=f"remove it (`ulimit -v unlimited` before the command or in the job's script) or raise it to "
            f"{ADDRESS_SPACE_NEEDED // 2**20} MiB or more; to bound memory, use Slurm --mem or a cgroup limit, which "
            "count the memory used, not the address space reserved")


# The exit status of a worker that was still starting when chorus_batch was called in it (refuse_while_starting).
REENTERED_EXIT = 86


def refuse_while_starting() -> None:
    """Where chorus_batch begins work (a run, a pool of workers): a worker started by spawn (the only way on
    Windows, macOS's default) first imports the caller's main script, and one that calls chorus_batch.run at its
    top level, not under `if __name__ == "__main__":`, ran the run again in each worker ("the manifest is locked by
    another run: pid <its own caller>", then "a worker ended abruptly ... out-of-memory killer"). Such a worker
    exits at once with REENTERED_EXIT, which the caller says as what it is (owned)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # (multiprocessing's own test of it)
        raise SystemExit(REENTERED_EXIT)


def _reentered() -> UsageError:
    main = getattr(sys.modules.get("__main__"), "__file__", None) or "the script that called chorus_batch"
    return UsageError(
        f"the worker processes could not start: they are started by spawn (as on Windows and macOS), which imports "
        f"{main} in each of them first, and that script calls chorus_batch when it is imported: each worker began "
        "the run again; nothing was done in them",
        where=main,
        fix='put the script\'s work under `if __name__ == "__main__":` (Python\'s multiprocessing guide, "safe '
            'importing of main module"), or pass workers=1')


def _pool_context() -> multiprocessing.context.BaseContext:
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker_init(forked: bool = True, setup: tuple | None = None) -> None:
    """In each worker: die with the parent (never an orphan holding the caller's output open), leave
    signals to the parent (it stops the pool), and write nothing to the caller's stdout or stderr; then
    `setup` (function, argument), if given: what a spawned worker cannot inherit (pool_executor)."""
    import os
    import signal

    from .faults import pause

    pause("worker-start")  # (the tests signal a worker here, before it has its own dispositions)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    if hasattr(signal, "SIGQUIT"):  # so does Ctrl-\
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    if hasattr(signal, "SIGBREAK"):  # and Ctrl-Break on Windows (the console sends it to each of its processes)
        signal.signal(signal.SIGBREAK, signal.SIG_IGN)
    if hasattr(signal, "SIGXCPU"):  # a worker's own CPU limit: it dies, and the parent says how (WorkerDied)
        signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    for name in ("SIGUSR1", "SIGUSR2"):  # so does Slurm's --signal (every process of the step)
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:  # (nohup's stays: cli)
            signal.signal(signum, signal.SIG_DFL)
    _forking.unblock()  # what came while it started now meets these dispositions
    # PR_SET_PDEATHSIG fires when the *thread* that started the worker ends. A fork pool starts all its workers in
    # its first submit (Hasher._start, the main thread); a spawn pool starts each when a submit finds none idle,
    # from whichever thread submits (the hash feeder): killed when that thread ended, a worker waiting for work
    # took the call queue's lock with it and the others waited for it forever (the run hung at its end).
    if forked and sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed when the parent dies, even by SIGKILL
            if os.getppid() == 1:  # the parent died before prctl took effect
                os._exit(1)
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    if setup is not None:
        setup[0](setup[1])


@contextlib.contextmanager
def pool(workers: int, setup: tuple | None = None) -> Iterator[ProcessPoolExecutor]:
    """Worker processes for the block (owned: leaving it waits for them, or stops them)."""
    executor = pool_executor(workers, setup)
    with owned(executor):
        yield executor


@contextlib.contextmanager
def owned(executor: ProcessPoolExecutor) -> Iterator[None]:
    """Leaving the block normally waits for the workers; leaving it by an exception or a signal
    (KeyboardInterrupt, Stopped, a generator closed early) cancels what is queued and kills them at once,
    so a stopped run does not wait for a 100 GB file to finish hashing."""
    processes = list((getattr(executor, "_processes", None) or {}).values())  # (a broken pool forgets them)
    try:
        yield
    except BrokenProcessPool as exc:  # a worker died (the OOM killer's SIGKILL): said as such, not "internal error"
        processes += [p for p in (getattr(executor, "_processes", None) or {}).values() if p not in processes]
        stop_pool(executor)
        if any(process.exitcode == REENTERED_EXIT for process in processes):
            raise _reentered() from exc
        raise WorkerDied(_deaths(processes)) from exc
    except BaseException:
        stop_pool(executor)
        raise
    executor.shutdown(wait=True)


def _deaths(processes: list) -> str:
    """How the pool's dead workers ended ("killed by SIGKILL"), as far as the processes kept tell."""
    import signal

    said = set()
    for process in processes:
        code = process.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                said.add(f"killed by {signal.Signals(-code).name}")
        elif code:
            said.add(f"exited with status {code}")
    if len(said) > 1:  # the executor ends the other workers with SIGTERM once one died: theirs is not the cause
        said.discard("killed by SIGTERM")
    return ", ".join(sorted(said))


class _Forking(threading.local):
    """The stop signals blocked, in the thread that forks the workers, from just before each fork until the parent
    goes on and the worker has set its own dispositions (_worker_init): a forked worker runs the parent's Python
    handlers until then, and a signal to the whole process group (Ctrl-C, Slurm's --signal) raised Stopped inside a
    library's at-fork hook: "Exception ignored ... Traceback" on the caller's terminal (seen in CI with SIGUSR1)."""

    active = False  # a pool's submit, which forks its workers (fork context), is under way in this thread
    mask: "set | None" = None  # the thread's mask before the fork

    def __init__(self) -> None:
        if hasattr(os, "register_at_fork") and hasattr(signal, "pthread_sigmask"):
            os.register_at_fork(before=self._block, after_in_parent=self.unblock)

    def _block(self) -> None:
        if self.active and self.mask is None:
            stops = {getattr(signal, name) for name in ("SIGINT", *STOP_SIGNALS) if hasattr(signal, name)}
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)

    def unblock(self) -> None:
        if self.mask is not None:
            mask, self.mask = self.mask, None
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


_forking = _Forking()


class _Pool(ProcessPoolExecutor):
    def submit(self, *args, **kwargs):  # type: ignore[override]
        _forking.active = True  # (a fork context's pool forks all its workers in its first submit)
        try:
            return super().submit(*args, **kwargs)
        finally:
            _forking.active = False


# Windows waits on a pool's processes with WaitForMultipleObjects, at most 63 handles, two of them the pool's own:
# concurrent.futures refuses more than 61 workers there (ValueError "max_workers must be <= 61").
MAX_WINDOWS_WORKERS = 61
_said_windows_workers: set[int] = set()


def _windows_workers(workers: int) -> int:
    """`workers`, at most MAX_WINDOWS_WORKERS on Windows, said once per value: `--workers 64` ([run] workers, 1 to
    256 everywhere) on a Windows machine ended the run as an "internal error: ValueError: max_workers must be <= 61"
    as soon as its site had enough files to hash in processes."""
    if sys.platform != "win32" or workers <= MAX_WINDOWS_WORKERS:
        return workers
    if workers not in _said_windows_workers:
        import logging

        _said_windows_workers.add(workers)
        logging.getLogger("chorus_batch").warning(
            f"{workers} worker processes asked for (--workers, or workers in chorus.toml): Windows runs at most "
            f"{MAX_WINDOWS_WORKERS} in one pool, so {MAX_WINDOWS_WORKERS} are used; pass --workers "
            f"{MAX_WINDOWS_WORKERS} or fewer to not be told this")
    return MAX_WINDOWS_WORKERS


def pool_executor(workers: int, setup: tuple | None = None) -> ProcessPoolExecutor:
    """Worker processes that die with the caller and leave signals to it; the caller stops them (pool). `setup`:
    (function, argument) each worker calls as it starts, e.g. to take a shared counter: a module global the caller
    set is inherited by forked workers only (spawned ones, on Windows and macOS, import the module afresh)."""
    refuse_while_starting()
    workers = _windows_workers(workers)
    ensure_open_files(workers)
    context = _pool_context()
    if context.get_start_method() == "fork":
        import ctypes  # noqa: F401  (loaded once here, for every forked worker's prctl: each loaded it again, 3 ms)
    return _Pool(workers, mp_context=context, initializer=_worker_init,
                 initargs=(context.get_start_method() == "fork", setup))


def stop_pool(executor: ProcessPoolExecutor) -> None:
    """Cancel what is queued and kill the workers at once (an executor already shut down: nothing)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())  # the executor keeps no public handle
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)
