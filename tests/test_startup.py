"""A command imports what it uses: a local run loads no cloud client, and a run whose findings are cached loads
none of the checks or header readers (issue 15: no fixed costs; `python -X importtime` gives the figures)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from chorus_batch.cli import demo_site

# Loaded by a command that needs them, never by a local run: the Azure/S3 clients and their event loop.
CLOUD = ("asyncio", "fsspec", "adlfs", "azure", "s3fs", "chorus_batch.sources.cloud", "chorus_batch.sources.remote",
         "chorus_batch.store.remote")
# Loaded only to read headers or check findings: a no-change night has them cached.
CHECKS = ("pydicom", "wfdb", "chorus_batch.validate.checks", "chorus_batch.validate.readers", "duckdb")
NEVER = ("pandas", "matplotlib", "jinja2", "pyarrow.compute", "pyarrow.dataset")


def modules_after_run(site: Path, db: Path) -> set[str]:
    """The modules a `run` (as the command line starts it) has loaded when it ends."""
    script = ("import json, sys\nfrom chorus_batch.cli import main\n"
              f"code = main(['run', '--site', {str(site)!r}, '--db', {str(db)!r}, '-q'])\n"
              "print(json.dumps([code, sorted(sys.modules)]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    code, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert code in (0, 1), out.stderr
    return set(modules)


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules or any(m.startswith(name + ".") for m in modules))


def test_a_local_run_loads_no_cloud_client_and_a_no_change_run_no_checks(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    db = tmp_path / "m.sqlite"

    first = modules_after_run(site, db)
    assert loaded(first, CLOUD + NEVER) == []
    assert "chorus_batch.validate.checks" in first  # (the first run did check the site)

    again = modules_after_run(site, db)
    assert loaded(again, CLOUD + CHECKS + NEVER) == []


def test_help_loads_no_data_library():
    script = ("import contextlib, io, json, sys\nfrom chorus_batch.cli import main\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    for argv in (['--help'], ['run', '--help'], ['status', '--help']):\n"
              "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
              "print(json.dumps(sorted(sys.modules)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert loaded(modules, ("polars", "pyarrow", "numpy", "duckdb", "pydantic") + CLOUD + CHECKS + NEVER) == []
