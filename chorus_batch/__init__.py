"""chorus_batch: track and version a CHoRUS site's data tree.

    from chorus_batch import RunSettings, run
    result = run(RunSettings(site="/data/site", db="manifest.sqlite"))
    result.change_set  # polars frame: version, change, srcfile, old_srcfile, file_id, old_file_id, modality,
                      # person_id, size, md5
"""

from __future__ import annotations

import importlib

# No eager import here, not even `typing` (30 ms): `python -m chorus_batch` and the console script import this
# package before their entry code can catch a Ctrl-C, which would print a traceback.
TYPE_CHECKING = False

__version__ = "0.2.0"  # the distribution's version too (pyproject.toml reads it from here: dynamic)


def release() -> str:
    """The release, as recorded in each run and version. Read from this package, not from the installed
    distribution's metadata (importlib.metadata: ~35 ms of every command's start-up), which is built from it."""
    return __version__


__all__ = ["ChorusError", "ExitCode", "Manifest", "RunResult", "RunSettings", "load_config", "run"]

# Heavy modules (polars, duckdb, pyarrow) load on first use, so `--help` stays instant.
_LAZY = {
    "ChorusError": "errors", "ExitCode": "errors",
    "RunSettings": "config", "load_config": "config", "RunResult": "pipeline", "run": "pipeline", "Manifest": "store",
}

if TYPE_CHECKING:
    from typing import Any

    from .config import RunSettings, load_config
    from .errors import ChorusError, ExitCode
    from .pipeline import RunResult, run
    from .store import Manifest


def __dir__() -> list[str]:
    """The lazy names too: a notebook's `chorus_batch.<Tab>` and `dir(chorus_batch)` offered no run, RunSettings or
    Manifest (they load on first use, not at import)."""
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'chorus_batch' has no attribute {name!r}")
