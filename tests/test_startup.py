"""A command imports what it uses: a local run loads no cloud client, and a run whose findings are cached loads
none of the checks or header readers (issue 15: no fixed costs; `python -X importtime` gives the figures)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chorus_batch.cli import demo_site
from chorus_batch.validate import rules

pytestmark = pytest.mark.serial  # timed: run alone, after the parallel tests (scripts/test)

# Loaded by a command that needs them, never by a local run: the Azure/S3 clients and their event loop.
CLOUD = ("asyncio", "fsspec", "adlfs", "azure", "s3fs", "chorus_batch.sources.cloud", "chorus_batch.sources.remote",
         "chorus_batch.store.remote")
# Loaded only to read headers or check findings: a no-change night has them cached.
CHECKS = ("pydicom", "wfdb", "chorus_batch.validate.checks", "chorus_batch.validate.readers", "duckdb",
          "pyarrow.compute")  # (procedure_occurrence.csv's ids, streamed in the hashing workers)
NEVER = ("pandas", "matplotlib", "jinja2", "pyarrow.dataset")


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


def test_a_run_that_finds_repeated_ids_and_nul_bytes_loads_no_pandas_either(tmp_path):
    """pyarrow asks pandas whether it can take a Python value (pa.array([]), pc.greater(x, 1), pc.index(x, True)),
    importing pandas into the run: the readers of person.csv's and visit_occurrence.csv's repeated ids and of a
    registry's NUL bytes hand it none, on the paths a clean site takes and on those of these faults."""
    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    for table in ("person.csv", "visit_occurrence.csv"):
        path = site / "OMOP" / table
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join([*lines, lines[-1], lines[1]]))  # (one id twice in a batch)
    registry = site / "image_registry.csv"
    registry.write_bytes(registry.read_bytes() + b"\x00\x00\x00\n")
    db = tmp_path / "m.sqlite"

    modules = modules_after_run(site, db)
    assert loaded(modules, NEVER) == []
    findings = subprocess.run([sys.executable, "-m", "chorus_batch", "validate", "--db", str(db)],
                              capture_output=True, text=True).stdout
    assert "person.repeated_id" in findings and "visit.repeated_id" in findings and "NUL" in findings, findings


def test_the_read_only_commands_on_a_local_manifest_load_no_cloud_client(tmp_path):
    """versions, validate --db, changes, files and report asked whether --db is in Azure by loading the Azure client
    (store.remote: asyncio, ssl, 20-50 ms of each command's start-up) for a local file."""
    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    db = tmp_path / "m.sqlite"
    modules_after_run(site, db)
    commands = [["versions"], ["validate"], ["changes"], ["files"], ["report", "--out", str(tmp_path / "r.html")]]
    script = ("import contextlib, io, json, sys\nfrom chorus_batch.cli import main\ncodes = []\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              f"    for argv in {commands!r}:\n"
              f"        codes.append(main([*argv, '--db', {str(db)!r}, '-q']))\n"
              "print(json.dumps([codes, sorted(sys.modules)]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    codes, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert codes == [0] * len(commands), out.stderr
    assert loaded(set(modules), CLOUD) == []


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


def test_a_command_builds_the_settings_validators_it_uses_only(tmp_path):
    """pydantic builds a model's validator as its class is made unless it is deferred: importing chorus_batch.config
    built twelve (each [section], their two bases, CloudSettings, ConfigFile, RunSettings), whichever command ran.
    A run builds ConfigFile's (which validates every [section] written) and RunSettings'; `versions` only
    ConfigFile's; the sections a file leaves out are their defaults, with no validator of their own."""
    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    config = tmp_path / "chorus.toml"
    config.write_text('[site]\nroot = "site"\n[manifest]\ndb = "m.sqlite"\n[run]\nworkers = 2\n'
                      '[azure]\naccount_name = "acct"\n')

    def built(*argv: str) -> list[str]:
        script = ("import contextlib, io, json, sys\nfrom pydantic import BaseModel\nfrom chorus_batch.cli import main\n"
                  "import chorus_batch.config as config\n"
                  "with contextlib.redirect_stdout(io.StringIO()):\n"
                  f"    code = main([*{list(argv)!r}, '--config', {str(config)!r}, '-q'])\n"
                  "print(json.dumps([code, sorted(name for name, model in vars(config).items() if isinstance(model, type)"
                  " and issubclass(model, BaseModel) and model.__pydantic_complete__)]))")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                             cwd=tmp_path)
        code, models = json.loads(out.stdout.strip().splitlines()[-1])
        assert code == 0, out.stderr
        return models

    assert built("run") == ["ConfigFile", "RunSettings"]
    assert built("versions") == ["ConfigFile"]


# ----------------------------------------------------------------------------- memory given back (issue 15)

def _python(script: str, *args: str, **env: str) -> str:
    """The last line a Python script printed, run without the allocator's setting unless `env` gives one."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "_RJEM_MALLOC_CONF")}
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env={**clean, **env},
                         check=True)
    return out.stdout.strip().splitlines()[-1]


def _polars_passes_on() -> str:
    """What a process that imported polars passes on to the commands it starts in _RJEM_MALLOC_CONF."""
    return _python("import os, polars\nprint(os.environ['_RJEM_MALLOC_CONF'])")


def test_the_command_line_sets_the_allocator_before_polars_loads_and_keeps_a_users_setting():
    script = ("import json, os, sys\nimport chorus_batch.cli as cli\n"
              "cli.main = lambda: print(json.dumps([os.environ.get('_RJEM_MALLOC_CONF'), 'polars' in sys.modules])) or 0\n"
              "cli.entry()")
    from chorus_batch.cli import ALLOCATOR_SETTINGS

    assert json.loads(_python(script)) == [ALLOCATOR_SETTINGS, False]
    # Started by a process that imported polars (a notebook, a benchmark): polars' own default is not the user's
    inherited = _polars_passes_on()
    assert json.loads(_python(script, _RJEM_MALLOC_CONF=inherited))[0].endswith(ALLOCATOR_SETTINGS)
    assert json.loads(_python(script, _RJEM_MALLOC_CONF="narenas:2")) == [f"narenas:2,{ALLOCATOR_SETTINGS}", False]
    assert json.loads(_python(script, _RJEM_MALLOC_CONF="dirty_decay_ms:9000")) == ["dirty_decay_ms:9000", False]


def test_the_command_line_loads_numpy_with_one_blas_thread_and_pydantic_without_plugins_unless_set():
    """numpy, which pyarrow loads in every run, started an OpenBLAS thread per CPU (and their buffers) as it loaded,
    for linear algebra no command does; pydantic read every installed distribution's entry points for plugins as the
    settings' models were built (issue 15: no fixed costs). A setting of the user's is kept."""
    script = ("import json, os, sys\nimport chorus_batch.cli as cli\n"
              "cli.main = lambda: print(json.dumps([os.environ.get(name) for name in "
              "('OPENBLAS_NUM_THREADS', 'PYDANTIC_DISABLE_PLUGINS')] + ['numpy' in sys.modules])) or 0\n"
              "cli.entry()")
    def said(**env: str) -> list:
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("PYTHONPATH", "OPENBLAS_NUM_THREADS", "PYDANTIC_DISABLE_PLUGINS")}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**clean, **env},
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert said() == ["1", "__all__", False]
    assert said(OPENBLAS_NUM_THREADS="", PYDANTIC_DISABLE_PLUGINS=" ") == ["1", "__all__", False]  # (empty: unset, as README
    # says of every variable)
    assert said(OPENBLAS_NUM_THREADS="4", PYDANTIC_DISABLE_PLUGINS="logfire") == ["4", "logfire", False]


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux")
def test_forked_workers_find_ctypes_loaded():
    """Each forked worker loaded ctypes again for its prctl (PR_SET_PDEATHSIG); the pool loads it once before the
    workers are forked, and they inherit it."""
    script = ("import os, sys\nfrom chorus_batch.processes import pool\n"
              "loads = []  # the processes that loaded ctypes (a finder asked first: the workers inherit it)\n"
              "class Seen:\n    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'ctypes':\n            loads.append(os.getpid())\n"
              "sys.meta_path.insert(0, Seen())\n"
              "def loaded_in_worker():\n    return os.getpid() in loads\n"
              "with pool(2) as executor:\n    print(sorted({executor.submit(loaded_in_worker).result() for _ in range(4)}))")
    assert _python(script) == "[False]"


@pytest.mark.skipif(sys.platform != "linux", reason="polars uses jemalloc (and /proc gives the RSS) on Linux")
def test_with_the_command_lines_setting_polars_gives_a_freed_frames_memory_back_soon():
    """The setting works with the polars installed: a freed 600 MB frame leaves the process within 0.3 s of further
    work (with polars' default, jemalloc keeps it for 0.5-1.5 s, and a 1M-file run held the pages of every step)."""
    script = ("import sys, time\nif sys.argv[1] == 'tool':\n    from chorus_batch.cli import return_freed_memory\n"
              "    return_freed_memory()\nimport polars as pl\n"
              "def rss():\n    with open('/proc/self/status') as f:\n"
              "        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) >> 10\n"
              "frame = pl.DataFrame({'a': pl.int_range(0, 40_000_000, eager=True)}).with_columns(b=pl.col('a') * 2)\n"
              "held = rss()\ndel frame\nend = time.monotonic() + 0.3\n"
              "while time.monotonic() < end:  # the allocator gives pages back as it works\n"
              "    pl.Series(range(1000)).sum()\n"
              "print(held, rss())")

    def freed_mb(wanted, *args: str, **env: str) -> list[int]:
        """MB given back, tried up to three times until `wanted(mb)` holds: a loaded machine can deschedule
        the 0.3 s of work (fewer allocations to give pages back on) or stretch it past polars' own 0.5 s."""
        tries: list[int] = []
        while len(tries) < 3 and not any(wanted(mb) for mb in tries):
            held, after = map(int, _python(script, *args, **env).split())
            tries.append(held - after)
        return tries

    def freed_soon(mb: int) -> bool:
        return mb > 500

    tries = freed_mb(freed_soon, "tool")
    assert any(map(freed_soon, tries)), tries
    # as a command a process that imported polars started (its environment holds polars' default)
    tries = freed_mb(freed_soon, "tool", _RJEM_MALLOC_CONF=_polars_passes_on())
    assert any(map(freed_soon, tries)), tries

    def kept(mb: int) -> bool:
        return mb < 100

    tries = freed_mb(kept, "plain")  # polars' default keeps it: what the setting changes
    assert any(map(kept, tries)), tries


# ----------------------------------------------------------------------------- the walk starts before the libraries load

_SPY = """
import json, os, sys
from chorus_batch import walk
seen = {"walked_here": 0}
parent = os.getpid()
walk_local, init = walk.walk_local, walk.EarlyListing.__init__

def counted(root, rel_dirs, *args, **kwargs):  # (in the worker processes too, where it counts nothing)
    if os.getpid() == parent and rel_dirs != [""]:
        seen["walked_here"] += 1
    return walk_local(root, rel_dirs, *args, **kwargs)

def spied(self, *args, **kwargs):
    seen["polars_loaded"] = "polars" in sys.modules
    init(self, *args, **kwargs)
    seen["started_ns"] = self.started_ns
    seen["workers"] = [p.pid for p in self._executor._processes.values()]

walk.walk_local, walk.EarlyListing.__init__ = counted, spied
from chorus_batch.cli import main
seen["code"] = main(sys.argv[1:])

def running(pid):  # (not a zombie: a worker that exited but was not waited for is not running)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

seen["left_running"] = [pid for pid in seen.get("workers", []) if running(pid)]  # as the command returns
print(json.dumps(seen))
"""


def _spied_run(*argv: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", _SPY, *argv], capture_output=True, text=True, env=env)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early listing forks its workers (Linux)")
def test_a_run_walks_the_site_while_its_libraries_load_and_lists_it_once(tmp_path):
    from conftest import current_rows, query

    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    db = tmp_path / "m.sqlite"

    seen = _spied_run("run", "--site", str(site), "--db", str(db), "--workers", "2", "-q")
    assert seen["code"] == 0, seen["stderr"]
    assert seen["polars_loaded"] is False  # the walk began before polars (and pyarrow, DuckDB) loaded
    assert seen["walked_here"] == 0  # the run's listing took the early walk: no folder was walked again
    assert seen["workers"] and seen["left_running"] == []
    # Its scan counts from when the walk began: a file changed after it was walked is hashed next time.
    (scan_started_ns,) = query(db, "SELECT scan_started_ns FROM runs")[0]
    assert scan_started_ns <= seen["started_ns"]

    # The same version as a run that walks the site itself
    alone = tmp_path / "alone.sqlite"
    single = _spied_run("run", "--site", str(site), "--db", str(alone), "--workers", "1", "-q")
    assert single["code"] == 0 and "started_ns" not in single and single["walked_here"] > 0
    assert current_rows(db) == current_rows(alone) and len(current_rows(db)) > 10
    assert query(db, "SELECT rule, srcfile FROM findings ORDER BY 1, 2") == \
        query(alone, "SELECT rule, srcfile FROM findings ORDER BY 1, 2")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early listing forks its workers (Linux)")
def test_a_run_that_fails_before_its_listing_leaves_no_walker_behind(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    # A --db that is no SQLite database is refused once the early walk has begun, before the listing. (A --db under a
    # file, the case this test had, is now refused before any work, the walk included: fsutil.require_reachable.)
    db = tmp_path / "notes.sqlite"
    db.write_text("not a manifest\n" * 100)
    seen = _spied_run("run", "--site", str(site), "--db", str(db), "--workers", "2")
    assert seen["code"] == 3 and "is not a readable SQLite database" in seen["stderr"], seen["stderr"]
    assert seen["workers"] and seen["left_running"] == []  # stopped as the command returned
    assert db.read_text() == "not a manifest\n" * 100


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early listing forks its workers (Linux)")
def test_the_walk_follows_chorus_toml(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    work = tmp_path / "work"
    work.mkdir()
    config = work / "chorus.toml"  # its paths are relative to its folder, not to where the command runs
    config.write_text('[site]\nroot = "../site"\n\n[manifest]\ndb = "m.sqlite"\n\n[run]\nworkers = 2\n')
    seen = _spied_run("run", "--config", str(config), "-q")
    assert seen["code"] == 0, seen["stderr"]
    assert seen["polars_loaded"] is False and seen["walked_here"] == 0 and seen["left_running"] == []
    # chorus.toml says to follow symbolic links: a walk made by the plain rule would not be taken
    config.write_text(config.read_text().replace("workers = 2", "workers = 2\nfollow_symlinks = true"))
    (site / "000001" / "notes.txt").write_text("new")
    seen = _spied_run("run", "--config", str(config), "-q")
    assert seen["code"] in (0, 1) and seen["walked_here"] == 0 and seen["left_running"] == [], seen["stderr"]



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early listing forks its workers (Linux)")
def test_each_shard_walks_its_own_folders_while_its_libraries_load(tmp_path):
    import polars as pl

    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    db = tmp_path / "m.sqlite"
    listed, seen = {}, {}
    for shard in range(4):
        for workers in ("2", "1"):  # with the early listing, and without (a shard's own walk)
            staging = tmp_path / f"staging-{workers}"
            seen[workers] = _spied_run("run", "--site", str(site), "--db", str(db), "--shard", f"{shard}/4",
                                       "--staging", str(staging), "--workers", workers, "-q")
            assert seen[workers]["code"] == 0, seen[workers]["stderr"]
            files = pl.read_parquet(staging / f"shard-{shard}-of-4" / "files.parquet")
            listed[shard, workers] = sorted(files["srcfile"].to_list())
        assert seen["2"]["polars_loaded"] is False and seen["2"]["walked_here"] == 0  # the early walk was taken
        assert seen["1"]["walked_here"] > 0 or listed[shard, "1"] == []
        assert listed[shard, "2"] == listed[shard, "1"]
    assert sum(len(listed[shard, "2"]) for shard in range(4)) == sum(1 for p in site.rglob("*") if p.is_file())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early listing forks its workers (Linux)")
def test_status_walks_the_site_while_its_libraries_load(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(demo_site(), site)
    db = tmp_path / "m.sqlite"
    assert _spied_run("run", "--site", str(site), "--db", str(db), "-q")["code"] == 0
    (site / "000001" / "notes.txt").write_text("new")
    seen = _spied_run("status", "--site", str(site), "--db", str(db), "--workers", "2", "--json")
    assert seen["code"] in (0, 1), seen["stderr"]
    assert seen["polars_loaded"] is False and seen["walked_here"] == 0 and seen["left_running"] == []


# Each of the readers that hand a CSV to pyarrow (streamed: person, visits, procedures; whole: a registry), then the
# process ends at once, as a script's or a notebook kernel's does after its last read
_READ_AND_EXIT = """import io, sys
from chorus_batch.validate import readers
kind, data = sys.argv[1], sys.argv[2].encode()
facts = readers.parse_facts(kind, io.BytesIO(data))
assert "error" not in facts, facts
"""
_CSVS = {  # (by the kinds of today's readers: a reader's kind is renamed when what it keeps changes)
    rules.KIND_PERSON: "person_id,y\n1,2\n",
    rules.KIND_VISITS: "visit_occurrence_id,person_id,visit_start_date\n7,1,2026-01-02\n",
    rules.KIND_PROCEDURES: "procedure_occurrence_id,procedure_concept_id,person_id\n5,4180938,1\n",
    rules.KIND_REGISTRY: ("file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file\n"
                          "1,5,1,g,7,2026-01-02,a,b\n"),
}


def test_a_process_that_read_a_csv_ends_without_an_abort():
    """A script (a cron job calling run(), open_manifest(...).findings()) or a notebook kernel that had read a CSV
    through pyarrow often died at exit with "terminate called without an active exception", SIGABRT (exit 134),
    after all its work was done: pyarrow's read-ahead thread let go of the Python file (and of the blocks it had
    read) after the reader returned, taking the GIL while the interpreter was finalizing. The readers now wait for
    that thread to let go before they return."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    runs = [(kind, subprocess.Popen([sys.executable, "-c", _READ_AND_EXIT, kind, text], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for kind, text in list(_CSVS.items()) * 3]
    ended = [(kind, proc.wait(timeout=300), proc.communicate()[1]) for kind, proc in runs]
    failed = [(kind, code, err.strip()[-300:]) for kind, code, err in ended if code != 0]
    assert not failed, failed


def test_a_csv_reader_returns_once_pyarrow_has_let_go_of_what_it_read():
    """What the abort above came from, told each time rather than by a process that dies now and then: when a reader
    returns, pyarrow's threads hold none of the blocks read from the file (Python objects: dropping one takes the
    GIL). Before, one was still held by Arrow's read-ahead thread after 1 read in 20 or so."""
    from chorus_batch.validate import readers

    made, freed = [0], [0]

    class Block(bytes):
        def __del__(self) -> None:
            freed[0] += 1

    class File(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            made[0] += 1
            return Block(super().read(size))

    held = {}
    for _ in range(100):
        for kind, text in _CSVS.items():
            made[0] = freed[0] = 0
            facts = readers.parse_facts(kind, File(text.encode()))
            assert "error" not in facts, facts
            if made[0] != freed[0]:
                held[kind] = held.get(kind, 0) + 1
    assert not held, held


def test_review_loads_no_cloud_client_for_papermill_and_its_kernel_no_pydantic():
    """`review` imports papermill without its remote stores (boto3, azure.storage.blob, pyarrow.fs, gcsfs, github:
    1.4 s of CPU of the 2.1 s `import papermill` took), and the notebook's kernel imports chorus_batch.review
    without pydantic's settings models (0.3 s): neither is used there. A later `import pyarrow.fs` still works."""
    script = ("import json, sys\nimport chorus_batch.review\nfrom chorus_batch.report.notebook import _import_papermill\n"
              "review = sorted(sys.modules)\npapermill = _import_papermill()\nafter = sorted(sys.modules)\n"
              "import pyarrow.fs\nprint(json.dumps([review, after, callable(papermill.execute_notebook)]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    review, after, executes = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded(set(review), ("pydantic",)) == []
    assert loaded(set(after), ("boto3", "azure", "gcsfs", "github", "pyarrow.fs", "aiohttp")) == [] and executes
