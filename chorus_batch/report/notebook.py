"""`chorus-batch review`: the reviewer's notebook (notebooks/review.ipynb) run headless, its executed copy
written owner-only. Run as `papermill notebooks/review.ipynb out.ipynb`, the copy takes the umask's mode
(0644 with the usual 0022, 0666 with 0000), and it holds person identifiers."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ChorusError, UsageError
from ..fsutil import check_not_manifest, check_target, scratch_folder, write_private, write_stdout
from ..units import home_relative


def review_notebook() -> Path:
    """The reviewer's notebook: inside the installed package (the wheel ships it), or notebooks/ of a checkout."""
    packaged = Path(__file__).resolve().parents[1] / "notebooks" / "review.ipynb"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "notebooks" / "review.ipynb"


NOTEBOOK = review_notebook()


def run_review(manifest: str, out: str | Path, *, version: str | None = None, compare_to: str | None = None,
               named: str | None = None, notebook: Path = NOTEBOOK) -> float:
    """Execute the notebook on `manifest` and write the executed notebook to `out` (atomically, 0600; "-":
    standard output, as `report --out -`); returns the seconds it took. `named`: the manifest as its commands
    take it when `manifest` is a local copy (of az://..., masked), as the report's `named`."""
    started = time.perf_counter()
    to_stdout = str(out) == "-"  # it wrote a file named "-" in the current folder
    if not to_stdout:
        check_target(out, example="review.ipynb")  # before the work: a folder, a link or a missing folder is refused
        check_not_manifest(out, manifest)  # the manifest itself, its lock, cache or side files
    if not notebook.is_file():
        raise UsageError(f"the review notebook is not at {notebook}", where="chorus-batch review",
                         fix="reinstall chorus-batch (pip install \".[notebook]\" from its checkout): the wheel ships the notebook")
    try:
        papermill = _import_papermill()
    except ImportError:
        raise UsageError("papermill is not installed", where="chorus-batch review",
                         fix='pip install ".[notebook]"') from None
    import nbformat

    from ..review import open_manifest

    reader = open_manifest(manifest)  # a missing manifest, no version yet or an unknown version: exit 2 now,
    label = reader.resolve(version, asked="--version")  # not a failed cell (exit 3) after the kernel started
    base = reader.compared_with(label, compare_to)  # (the notebook asks it too: run by hand, it is refused alike)
    # A time as --version or --compare-to: the version it selected said (a date in the future reviewed the latest
    # without a word); the notebook gets the labels, so it is said here, on stderr (stdout may be the notebook).
    for note in (reader.as_of_note(version, label), base and reader.as_of_note(compare_to, base)):
        if note:
            print(f"chorus-batch: {note}", file=sys.stderr)

    # The kernel inherits the umask: whatever a cell writes (a CSV, a PNG) is owner-only too.
    previous = os.umask(0o077)
    # The kernel's own stderr (a warning on every start, a ZMQ traceback when the command is stopped) goes to a
    # file without a name, said only if the kernel fails: the user sees the command's messages, never a traceback.
    kernel_log = tempfile.TemporaryFile()
    # papermill logs a kernel that did not start ("Error occurred while starting new kernel client ...") before
    # it raises: said once, by the error below
    quiet = logging.getLogger("papermill")
    was_disabled, quiet.disabled = quiet.disabled, True
    # The kernel's connection file (its ports and signing key) in a scratch folder of ours, not loose in the
    # temporary folder: a review killed by SIGKILL left it there for ever; the next review removes the folder.
    scratch = contextlib.ExitStack()
    try:
        kernel_folder = scratch.enter_context(scratch_folder("chorus-kernel-"))
        # The versions resolved here, by label: the notebook resolved "latest" (and a time) again, and a run that
        # committed in between had the checks made on one version and the command's checks on another.
        # The manifest with the home folder as '~' (open_manifest and --db read it back): the executed copy is shared,
        # and named the reviewer's home folder in its parameters cell, its printout and its commands
        parameters = {"manifest": home_relative(str(Path(manifest).resolve())), "version": label, "compare_to": base,
                      "manifest_name": named}
        # No output path: papermill would write the copy with the umask's mode, once per cell.
        nb = papermill.execute_notebook(str(notebook), None, parameters=parameters, kernel_name="python3",
                                        cwd=str(Path.cwd() if to_stdout else Path(out).resolve().parent),
                                        progress_bar=False, log_output=False,
                                        kernel_manager_class=_kernel_manager(kernel_log, kernel_folder))
    except papermill.PapermillExecutionError as exc:
        raise ChorusError(f"the review notebook failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}",
                          where=str(notebook), fix="run it in Jupyter on the same manifest to see the cell") from None
    except ChorusError:
        raise
    except Exception as exc:  # the kernel did not start or died: what it said, its last lines
        kernel_log.seek(0)
        said = [line for line in kernel_log.read().decode("utf-8", "replace").splitlines()
                if line.strip() and "running over TCP without encryption" not in line][-5:]
        raise ChorusError(f"the review notebook's kernel failed: {type(exc).__name__}: {exc}"
                          + ("; the kernel said:" if said else ""), detail=said,
                          where="the python3 Jupyter kernel of this environment",
                          fix="mend what the kernel said (its package: pip install \".[notebook]\" in this environment), "
                              "then run `chorus-batch review` again") from None
    finally:
        scratch.close()
        os.umask(previous)
        kernel_log.close()
        quiet.disabled = was_disabled
    if to_stdout:  # (UTF-8, as nbformat reads a notebook, whatever the code page a Windows redirect writes in)
        write_stdout(nbformat.writes(nb))
        sys.stdout.flush()
    else:
        write_private(out, nbformat.writes(nb).encode("utf-8"))
    return time.perf_counter() - started


# The remote stores papermill's iorw reaches for on import, each optional (it falls back when one is missing):
# `review` reads the notebook from a local file and writes no copy through papermill, so none is used. Their imports
# (boto3, azure.storage.blob, pyarrow.fs, gcsfs, github) were 1.4 s of CPU of the 2.1 s `import papermill` took.
_PAPERMILL_STORES = ("papermill.s3", "papermill.adl", "papermill.abs", "gcsfs", "pyarrow.fs", "github")


def _import_papermill():
    """papermill, imported without its remote stores (the ones not imported yet are blocked while it loads, then
    unblocked: a later `import pyarrow.fs` of the process imports it as ever)."""
    if "papermill" in sys.modules:
        return sys.modules["papermill"]
    blocked = [name for name in _PAPERMILL_STORES if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  (an import of it raises ImportError)
    try:
        import papermill
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return papermill


def _kernel_manager(log, folder: Path):
    """A kernel manager whose kernel writes its stderr to `log` (a file object) and its connection file in
    `folder`."""
    from jupyter_client.manager import AsyncKernelManager

    class _Kernel(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.connection_file = str(folder / "kernel.json")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw["stderr"] = log
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return _Kernel
