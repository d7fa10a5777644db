"""The reviewer's notebook (notebooks/review.ipynb): it runs headless with papermill on a two-version
SQLite manifest, on the Parquet snapshots of the same runs and on a single-version manifest, in a
kernel of this interpreter; and it is the jupytext twin of notebooks/review.py, outputs stripped."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import papermill
import polars as pl
import pytest
from conftest import ROOT, cli, run_site, write

from chorus_batch.errors import UsageError
from chorus_batch.review import open_manifest
from chorus_batch.testdata import Spec, make_testdata
from chorus_batch.units import home_relative

NOTEBOOK = ROOT / "notebooks" / "review.ipynb"
SCRIPT = ROOT / "notebooks" / "review.py"
# Figures: versions, persons, session starts/durations, sessions per person, sizes; with scan errors or
# unparseable paths +1, with validation findings +1, with an earlier version to compare with +1.
PLOTS = 5


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, Path]:
    """A two-version manifest (+ its Parquet snapshots) with every change kind, a vanished person, an empty
    file, a duplicate and an unparseable path (validated: the synthetic headers give findings); and a
    single-version manifest, not validated, with nothing to flag."""
    tmp = tmp_path_factory.mktemp("review")
    make_testdata(tmp / "td", Spec(persons=8, files_per_person=10, size=256))
    second = tmp / "td" / "second"
    shutil.rmtree(second / "000008")  # a person that disappears
    write(second, "000001/Waveforms/Telemetry/999001/999001.dat", b"")  # empty
    shutil.copy(second / "OMOP" / "person.csv", second / "OMOP" / "person_copy.csv")  # duplicate content
    write(second, "000002/Waveforms/notes.txt", b"fits no pattern")  # unparseable

    db, parquet, single = tmp / "two.sqlite", tmp / "snapshots", tmp / "one.sqlite"
    run_site(tmp / "td" / "first", db, parquet=str(parquet))
    run_site(second, db, parquet=str(parquet))
    run_site(tmp / "td" / "first", single, validate_site=False)
    return {"two": db, "parquet": parquet, "single": single}


def execute(manifest: Path, out: Path, **parameters) -> nbformat.NotebookNode:
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), parameters={"manifest": str(manifest), **parameters}, kernel_name="python3",
        cwd=str(out.parent), progress_bar=False, log_output=False, start_timeout=60, execution_timeout=120,
    )
    return nbformat.read(out, as_version=4)


@pytest.fixture(scope="module")
def reviewed(manifests, tmp_path_factory):
    """The notebook executed on a fixture manifest with its defaults, once a module, for the tests that read that
    one execution (each a real papermill run). The two-version one is given `large_change_share` as papermill's
    `-p large_change_share 5%` passes it, text: the share 0.05, the default (test_a_large_change_share_...)."""
    folder, done = tmp_path_factory.mktemp("reviewed"), {}

    def review(which: str) -> nbformat.NotebookNode:
        if which not in done:
            parameters = {"large_change_share": "5%"} if which == "two" else {}
            done[which] = execute(manifests[which], folder / f"{which}.ipynb", **parameters)
        return done[which]
    return review


@pytest.fixture(scope="module")
def single_reviewed(manifests, tmp_path_factory) -> dict:
    """One execution read by three tests: the single-version manifest copied to m1.sqlite, named relative from
    another folder (`papermill -p manifest ../m1.sqlite`), its version as `papermill -p version 20261127034021`
    passes it (a number), in a kernel whose home folder is this interpreter's environment (as a reviewer's
    ~/.venv is in theirs), its runtime folders elsewhere."""
    tmp = tmp_path_factory.mktemp("single")
    shutil.copy(manifests["single"], tmp / "m1.sqlite")
    (tmp / "other").mkdir()
    label = open_manifest(manifests["single"]).latest()
    home = Path(sys.prefix)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HOME", str(home))
        for name in ("JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR"):
            monkeypatch.setenv(name, str(tmp / name.lower()))  # nothing of the kernel's written into that home
        nb = execute(Path("../m1.sqlite"), tmp / "other" / "out.ipynb", version=int(label))
        named = home_relative(str(tmp.resolve() / "m1.sqlite"))  # (as the kernel names it: under its home)
    return {"nb": nb, "tmp": tmp, "label": label, "home": home, "named": named}


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for o in outputs(nb):
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif "data" in o:
            parts.append(o["data"].get("text/markdown", ""))
    return "".join(parts)


def check_run(nb: nbformat.NotebookNode, min_plots: int) -> str:
    errors = [o for o in outputs(nb) if o["output_type"] == "error"]
    assert not errors, "\n".join(f"{o['ename']}: {o['evalue']}" for o in errors)
    plots = sum("image/png" in o.get("data", {}) for o in outputs(nb))
    assert plots >= min_plots
    out = text(nb)
    assert f"prefix {home_relative(sys.prefix)}\n" in out  # the kernel runs this interpreter's environment
    return out


def findings_line(manifest: Path) -> tuple[int, str]:
    """(figures the findings section draws, the summary line it prints), from the manifest itself."""
    findings = open_manifest(manifest).findings()
    if findings.height == 0:  # (not validated: see test_single_version)
        return 0, "OK     validation findings: none "
    serious = findings.filter(findings["severity"] != "info").height
    return 1, f"{'CHECK' if serious else 'OK   '}  validation findings: "


@pytest.mark.parametrize("which", ["two", "parquet"])
def test_two_versions(manifests, reviewed, which):
    """The SQLite manifest and its Parquet snapshots give the same review."""
    plots, findings = findings_line(manifests[which])
    out = check_run(reviewed(which), PLOTS + 2 + plots)
    for line in ("CHECK  persons: none disappeared: 1 disappeared since", "CHECK  no empty files: 1 empty",
                 "CHECK  no duplicate contents: 1 duplicated", "CHECK  no unparseable paths: 1 current",
                 "CHECK  no scan errors: 1 recorded", "CHECK  removed + replaced <= 5%",
                 # (a snapshot folder holds no header facts: no start of today's integer session ids to check)
                 "OK     waveform sessions: plausible" if which == "two" else "SKIP   waveform sessions: plausible",
                 findings):
        assert line in out
    assert "⚠ LARGE CHANGE" in out
    # the findings by severity as the HTML report and `validate` say them, most serious first ("2 error, 1 info,
    # 1 warning" before: alphabetical, the severity's own word)
    found = open_manifest(manifests[which]).findings()["severity"].value_counts()
    if found.height:
        counts = dict(found.iter_rows())
        words = {"error": "error", "warning": "warning", "info": "note"}
        said = ", ".join(f"{counts[s]:,} {words[s]}{'' if counts[s] == 1 else 's'}" for s in words if s in counts)
        assert f"validation findings: {said}\n" in out, (said, out[-1500:])
    # counts of one in the singular ("1 contents at more than one path: 1 extra copies" before)
    for line in ("1 empty file, ", "1 content at more than one path: 1 extra copy, ", "1 scan error recorded with ",
                 "; 1 current unparseable path\n"):
        assert line in out, line
    assert "history of " in out


def test_single_version(single_reviewed, monkeypatch):
    monkeypatch.setenv("HOME", str(single_reviewed["home"]))  # the kernel's (check_run: its prefix as it names it)
    label = single_reviewed["label"]
    # as `papermill -p version 20261127034021` passes it: a number
    out = check_run(single_reviewed["nb"], PLOTS)
    assert f"reviewing  {label}:" in out
    assert "is the first version: nothing to compare with" in out
    assert "SKIP   persons: none disappeared" in out
    assert "SKIP   removed + replaced <= 5%" in out
    assert "OK     no empty files" in out
    # the fixture ran with --no-validate: no findings is not a clean version
    assert "CHECK  validation findings: not validated" in out and "all checks passed" not in out
    # said with the command that checks it, which pastes in any folder ("`chorus-batch validate`" before: with no
    # --db it reads ./chorus_manifest.sqlite)
    assert f"({shlex.join(['chorus-batch', 'validate', '--db', single_reviewed['named']])} checks it)" in out


def test_the_sessions_by_month_count_the_starts_the_sessions_table_gives(manifests, tmp_path):
    """The table of sessions by month read the start from the file names only: today's integer session ids
    carry none, so every session was "start unknown" while the line above said "0 without a known start"
    and the histogram showed their starts (from the WFDB headers). It groups the sessions' starts.
    Reviewed here against a later version: that the comparisons read backwards was not said (its removals were
    called the version's own, its persons "disappeared since" the later one)."""
    first, second = open_manifest(manifests["two"]).versions()["label"].to_list()
    # validated: the WFDB headers were read
    nb = execute(manifests["two"], tmp_path / "two.ipynb", version=first, compare_to=second)
    out = check_run(nb, PLOTS)
    assert f"compare to {second} (LATER than {first}: the comparisons read from {second} back to {first})" in out
    assert f"(read from {second} back to {first}: `removed` are files {second} has and {first} has not" in out
    assert f"review of {first} against the later {second} in " in out and "disappeared since" not in out
    tables = "".join(o["data"].get("text/plain", "") for o in outputs(nb) if "data" in o)
    sessions = open_manifest(manifests["two"]).sessions(first)
    assert sessions["start"].null_count() < sessions.height  # (the testdata headers give the starts)
    months = sessions.group_by(pl.col("start").dt.strftime("%Y-%m").fill_null("start unknown")).len()
    for month, n in months.iter_rows():
        assert re.search(rf"│ {month}\s+┆ {n}\s+┆", tables), (month, n, tables)


def test_names_in_the_notebooks_tables_are_shown_escaped(tmp_path):
    """The notebook showed frames as polars does: a file name with a line break showed as a space (another
    name), a right-to-left override reversed the rest of its cell and a person folder `000009 ` looked like
    `000009`, while `chorus-batch files` and the HTML report quote such names with escapes. The notebook's
    tables (HTML and plain text) now show them so too (review.shown_frame)."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db)
    for name in ("line\nbreak.txt", "rtl\u202etxt.exe", "OMOP/trail.csv "):
        write(site, name, b"odd")
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")
    run_site(site, db)
    nb = execute(db, tmp_path / "review.ipynb")
    check_run(nb, PLOTS)
    tables = [o["data"].get(mime, "") for o in outputs(nb) if "data" in o for mime in ("text/html", "text/plain")]
    shown = "".join(tables)
    assert "\u202e" not in shown and "line\nbreak" not in shown and "line break.txt" not in shown
    assert "trail.csv <" not in shown and "trail.csv │" not in shown
    assert "line\\nbreak.txt" in shown and "rtl\\u202etxt.exe" in shown, shown[:2000]  # as escapes
    assert "'OMOP/trail.csv '" in shown, shown  # a path column: quoted, as the text tables show it
    assert "history of " in text(nb)


def test_notebook_is_the_twin_of_the_script():
    script, notebook = jupytext.read(SCRIPT), jupytext.read(NOTEBOOK)

    def cells(nb):
        return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]

    assert cells(script) == cells(notebook), "run `jupytext --sync notebooks/review.py` (or --to ipynb)"
    params = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].source.startswith('manifest = "chorus_manifest.sqlite"')
    # where the README says to set `manifest`: the first code cell
    assert params[0] is next(c for c in notebook.cells if c.cell_type == "code")
    assert notebook.metadata["kernelspec"]["name"] == "python3"

    stored = nbformat.read(NOTEBOOK, as_version=4)  # committed without outputs
    for cell in stored.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def manifest_of(rows: int, folder: Path) -> Path:
    """A two-version manifest of `rows` waveform files (100 segments a session), built as a sharded run's merge
    commits them (benchmarks/merge_benchmark.py's rows): a second version replaces, removes, renames and adds."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import merge_benchmark as mb

    from chorus_batch.sources import open_source

    site, db = folder / "site", folder / "m.sqlite"
    site.mkdir(parents=True)
    files, based_on = mb.site_files(rows), None
    for step in range(2):
        mb.write_shards(files, folder / f"staging{step}", 1, open_source(str(site)).location, based_on)
        mb.merge(site, db, folder / f"staging{step}", folder)
        based_on, files = mb.manifest_rows(db)[2], mb.changed(files)
    return db


_PEAK = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "papermill", *sys.argv[1:]], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stderr[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB: the largest of papermill and its kernel
"""


@pytest.mark.serial
def test_the_notebooks_memory_does_not_grow_with_the_manifest(tmp_path):
    """The notebook held whole versions as polars frames (and their copies in DuckDB): 585 MB of RSS at 120k files,
    ~2 KB more per file (about 5 GB at 1M). It now asks DuckDB (a capped database in a scratch folder, filled in
    slices) and brings sums, pages and flagged rows: 4x the files costs a small constant, not 4x the memory."""
    peaks = {}
    for rows in (40_000, 160_000):
        db = manifest_of(rows, tmp_path / str(rows))
        out = subprocess.run([sys.executable, "-c", _PEAK, str(NOTEBOOK), str(tmp_path / f"{rows}.ipynb"), "-p", "manifest",
                              str(db), "--no-progress-bar"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        check_run(nbformat.read(tmp_path / f"{rows}.ipynb", as_version=4), PLOTS)
        peaks[rows] = int(out.stdout.split()[-1]) / 1024
    growth = peaks[160_000] - peaks[40_000]
    print(f"peak RSS (MiB) by files: {peaks}")
    # Whole frames grew ~2 KB a file: 120k more files were ~250 MB more.
    assert growth < 40, f"peak RSS {peaks} MiB: {growth:.0f} MiB more for 120k more files"


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_review_writes_the_executed_notebook_owner_only(manifests, tmp_path, umask):
    """`papermill notebooks/review.ipynb out.ipynb` writes the copy (person identifiers in its tables) with the
    umask's mode: 0644, or 0666 under umask 0000. `chorus-batch review` writes it 0600 whatever the umask, and so
    is what a cell writes (the kernel runs under umask 077)."""
    out = tmp_path / "review.ipynb"
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "review", "--db", str(manifests["two"]), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no kernel warning ("running over TCP ...")
    assert f"wrote {out}" in done.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    nb = nbformat.read(out, as_version=4)
    assert "CHECK  persons: none disappeared" in check_run(nb, PLOTS + 2)
    # the versions the command resolved, by label: the kernel resolved "latest" again, and a run committing in
    # between had the command check one version and the notebook review another
    labels = open_manifest(manifests["two"]).versions()["label"].to_list()
    assert {k: nb.metadata["papermill"]["parameters"][k] for k in ("version", "compare_to")} == \
        {"version": labels[-1], "compare_to": labels[-2]}
    assert [p.name for p in tmp_path.iterdir()] == ["review.ipynb"]  # no temporary file left
    bad = cli("review", "--db", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "x.ipynb"))
    assert bad.returncode == 2 and "no manifest at" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


@pytest.fixture(scope="module")
def review_of_the_future_to_stdout(manifests, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`chorus-batch review --version 2099-01-01 --out -` on the single-version manifest, in an empty folder, with
    standard output and error in cp1252 (PYTHONIOENCODING): one review read by the two tests after this."""
    cwd = tmp_path_factory.mktemp("stdout")
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "review", "--db", str(manifests["single"]),
                           "--version", "2099-01-01", "--out", "-"], capture_output=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONIOENCODING": "cp1252"})
    return done, cwd


def test_review_out_dash_writes_the_notebook_to_standard_output(review_of_the_future_to_stdout):
    """`review --out -` wrote a file named "-" in the current folder (and said "wrote .../-"); as `report --out -`,
    the executed notebook goes to standard output and the line that says so to standard error. In UTF-8, as nbformat
    reads a notebook, whatever the stream's encoding: a Windows redirect writes the ANSI code page (cp1252, made here
    with PYTHONIOENCODING), in which the notebook's dashes were bytes no notebook reader takes, and its \u26a0 the
    text "\\u26a0"."""
    done, tmp_path = review_of_the_future_to_stdout  # (run in the empty folder tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert b"wrote the executed notebook to standard output" in done.stderr and not (tmp_path / "-").exists()
    text = done.stdout.decode("utf-8")  # (strict: a cp1252 byte fails here)
    assert "\u2014" in text and "\u26a0" in text and "\\u26a0" not in text
    check_run(nbformat.reads(text, as_version=4), PLOTS)
    assert list(tmp_path.iterdir()) == []


def test_review_compared_with_the_version_it_reviews_is_refused(manifests, tmp_path):
    """`review --compare-to L` where L is the version reviewed (the latest, by default) ran the notebook, which
    then compared nothing and called the version "(first version)", every comparison "no earlier version".
    It is refused before the kernel starts, exit 2, saying so; nothing is written."""
    labels = open_manifest(manifests["two"]).versions()["label"].to_list()
    for args in (["--compare-to", labels[-1]], ["--version", labels[0], "--compare-to", labels[0]]):
        done = cli("review", "--db", str(manifests["two"]), *args, "--out", str(tmp_path / "x.ipynb"))
        assert done.returncode == 2 and "is the version reviewed" in done.stderr and "fix:" in done.stderr, done.stderr
        assert list(tmp_path.iterdir()) == []


def test_the_notebook_run_by_hand_compared_with_the_version_it_reviews_is_refused(manifests, tmp_path):
    """papermill (or Jupyter) with `compare_to` equal to `version` reviewed the version as "(first version)",
    every comparison "no earlier version": the notebook refuses it as `review --compare-to` does."""
    labels = open_manifest(manifests["two"]).versions()["label"].to_list()
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(manifests["two"], out, version=labels[-1], compare_to=labels[-1])
    assert failed.value.ename == "UsageError" and "is the version reviewed" in failed.value.evalue
    assert "first version" not in text(nbformat.read(out, as_version=4))


def test_the_notebook_on_a_manifest_without_versions_says_so_without_a_traceback(tmp_path):
    """Run in Jupyter (or papermill) on a manifest with no version yet, the notebook's cell 5 showed a traceback
    through chorus_batch's internals around 'the manifest has no versions yet'. A chorus_batch error now renders
    in IPython as the command line says it: what, where and what to do, no frames."""
    from chorus_batch.store import Manifest

    db = tmp_path / "m.sqlite"
    Manifest(db).ensure_schema()
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"manifest": str(db)}, kernel_name="python3",
                                   progress_bar=False, cwd=str(tmp_path))
    assert failed.value.ename == "UsageError" and "no versions yet" in failed.value.evalue
    errors = [o for cell in nbformat.read(out, as_version=4).cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1, errors
    shown = "\n".join(errors[0]["traceback"])
    # (a notebook is a library caller: the fix names the library's call, as open_manifest's other messages do)
    assert "the manifest has no versions yet" in shown and "fix:   commit one first, `chorus_batch.run(" in shown, shown
    assert "chorus_batch/review.py" not in shown and "File " not in shown and "Traceback" not in shown, shown


def test_review_stopped_while_its_kernel_runs_says_one_line_and_no_traceback(manifests, tmp_path):
    """SIGTERM (Slurm, systemd) to `review` while the notebook ran printed the kernel's ZMQ traceback ("Socket
    operation on non-socket") and said "nothing was committed; the manifest holds what it held before", of a
    command that writes no version; every review also began with the kernel's "running over TCP without
    encryption" warning. The kernel's stderr is kept from the user's; the command says no notebook was written."""
    import signal
    import time

    import psutil

    out = tmp_path / "r.ipynb"
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "review", "--db", str(manifests["two"]),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any("ipykernel" in " ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(recursive=True)):
        assert time.monotonic() < deadline and proc.poll() is None, "no kernel started"
        time.sleep(0.1)
    time.sleep(1.5)  # the kernel runs cells
    proc.send_signal(signal.SIGTERM)
    _stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err == "chorus-batch: terminated (SIGTERM); no notebook was written (review only reads)\n", err
    assert list(tmp_path.iterdir()) == []
    # (no kernel warning in a review that completes either: test_review_writes_the_executed_notebook_owner_only)


def test_review_killed_while_its_kernel_runs_leaves_the_kernels_key_only_where_the_next_review_removes_it(
        manifests, tmp_path):
    """A review killed by SIGKILL (the out-of-memory killer, a job's time limit) left the kernel's connection
    file (its ports and signing key), `tmpXXXX.json`, loose in the temporary folder, where nothing removed it.
    It goes into a scratch folder of the review's now, whose lock the next review finds let go."""
    import contextlib
    import signal
    import time

    import psutil

    from chorus_batch import fsutil

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "review", "--db", str(manifests["two"]),
                             "--out", str(tmp_path / "r.ipynb")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(tmp)})
    deadline = time.monotonic() + 60
    def kernels() -> list[psutil.Process]:
        found = []
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # (a child that ended meanwhile)
                if "ipykernel" in " ".join(child.cmdline()):
                    found.append(child)
        return found

    while not (started := kernels()):
        assert time.monotonic() < deadline and proc.poll() is None, "no kernel started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    psutil.wait_procs(started, timeout=30)  # each sees its parent gone and ends
    assert list(tmp.glob("*.json")) == []
    (left,) = tmp.glob("chorus-kernel-*")
    old = time.time() - fsutil.ABANDONED_AFTER_S - 60
    os.utime(left, (old, old))
    with fsutil.scratch_folder("chorus-kernel-", tmp):  # what the next review makes first
        assert not left.exists()

def test_a_kernel_that_cannot_start_is_said_with_what_it_said(manifests, tmp_path):
    """With the kernel's stderr kept from the user's, a kernel that dies at start must still be explained: the
    error names the failure and the kernel's last lines, once (papermill's own log line is not repeated)."""
    fake = tmp_path / "fake"
    write(fake, "ipykernel_launcher.py", b"import sys\nsys.stderr.write('boom: no kernel here\\n')\nsys.exit(1)\n")
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "review", "--db", str(manifests["single"]),
                           "--out", str(tmp_path / "r.ipynb")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(fake)})
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("chorus-batch: error: the review notebook's kernel failed: "), done.stderr
    assert "the kernel said:\n    boom: no kernel here\n" in done.stderr and "fix:" in done.stderr, done.stderr
    assert not (tmp_path / "r.ipynb").exists() and "Traceback" not in done.stderr


def test_a_large_change_share_given_as_a_percentage_or_out_of_range_is_said_before_the_review(manifests, reviewed,
                                                                                               tmp_path):
    """`papermill -p large_change_share 5%` passes text: the notebook failed two sections later in a format string
    (ValueError: Unknown format code '%'); `-p large_change_share 5` (meant as 5%) read as 500% and flagged nothing.
    Text "5%" is now the share 0.05; a number outside 0..1 is refused in the first cell, saying what to give."""
    from chorus_batch.review import share_argument

    assert share_argument("5%", "s") == 0.05 and share_argument(0.05, "s") == 0.05 and share_argument("0.1", "s") == 0.1
    for wrong in (5, "lots", None, True, float("nan"), "-1%"):
        with pytest.raises(UsageError, match="is a share of the files from 0 to 1"):
            share_argument(wrong, "large_change_share")
    nb = reviewed("two")  # (executed with large_change_share="5%")
    assert nb.metadata["papermill"]["parameters"]["large_change_share"] == "5%"
    out = check_run(nb, PLOTS + 2)
    assert "CHECK  removed + replaced <= 5%" in out
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(manifests["two"], tmp_path / "five.ipynb", large_change_share=5)
    assert failed.value.ename == "UsageError" and "is a share of the files from 0 to 1, not 5" in failed.value.evalue
    assert "import sys" in failed.value.source  # the first code cell after the parameters: before any section ran


@pytest.mark.parametrize("parameters", [{"version": [1]}, {"version": True}, {"compare_to": 2.5}, {"manifest_name": 5}])
def test_a_version_parameter_of_a_wrong_type_is_said_as_such(manifests, tmp_path, parameters):
    """The notebook turned every `version` and `compare_to` into text: `-p version '[1]'` (a list) or `true` was
    "no version '[1]' in the manifest", `-p compare_to 2.5` "no version '2.5'", hiding what is wrong. They reach
    the reader as given, which says the type and what to give; a number stays a label (test_single_version)."""
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(manifests["two"], tmp_path / "out.ipynb", **parameters)
    (name, value), = parameters.items()
    assert failed.value.ename == "UsageError"
    if name == "manifest_name":  # (printed "manifest   5", and named 5 in the commands it suggests)
        assert "manifest_name is text, not int 5" in failed.value.evalue, failed.value.evalue
        return
    assert f"a version is a label or an ISO date-time, not {type(value).__name__} {value!r}" in failed.value.evalue


def test_a_snapshot_folder_of_a_version_not_validated_is_not_said_to_be_clean(tmp_path):
    """A snapshot folder does not record whether `validate` checked a version: the checklist said
    "OK     validation findings: none recorded" of a version `run --no-validate` committed. It says SKIP."""
    make_testdata(tmp_path / "td", Spec(persons=2, files_per_person=3, size=64))
    run_site(tmp_path / "td" / "first", tmp_path / "m.sqlite", parquet=str(tmp_path / "snap"), validate_site=False)
    out = check_run(execute(tmp_path / "snap", tmp_path / "out.ipynb"), PLOTS)
    assert "SKIP   validation findings: not known whether validated" in out
    assert "a snapshot folder does not record whether it was validated" in out and "all checks passed" in out
    # (nor does it hold the sessions' header facts: "OK  0 of 2 sessions start outside ..." of starts never read)
    assert "SKIP   waveform sessions: plausible starts and durations: none of the" in out, out


def test_the_kernels_environment_under_the_home_folder_is_not_named_by_it(single_reviewed, monkeypatch):
    """The first cell printed the kernel's `sys.prefix` in full ("prefix /home/alice/miniconda3/envs/chorus"): the
    executed notebook a reviewer attaches to a review named their home folder. It is written '~' (the environment
    is still told apart: ~/.venv, ~/miniconda3/envs/chorus)."""
    home = single_reviewed["home"]  # this interpreter's environment as the home folder: a reviewer's ~/.venv is in theirs
    monkeypatch.setenv("HOME", str(home))  # (as the kernel had it)
    out = check_run(single_reviewed["nb"], PLOTS)
    assert "prefix ~\n" in out and str(home) not in out, out[:300]
    assert home_relative(f"{home}/envs/x") == "~/envs/x" and home_relative(f"{home}x/y") == f"{home}x/y"  # a sibling: not home


def test_a_manifest_in_azure_given_to_the_notebook_is_said_without_its_signature(tmp_path):
    """`manifest = "az://c/m.sqlite?sv=...&sig=..."` (as `review --db` takes it) was "no manifest at
    <cwd>/az:/c/m.sqlite?sv=...&sig=<the signature>", twice, in the executed notebook a reviewer shares. It is
    said as a manifest in Azure, masked, with the command that reviews it."""
    url = "az://site/chorus_manifest.sqlite?sv=2024-01-01&sig=SECRETSIGNATURE"
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(url, out)  # type: ignore[arg-type]
    assert failed.value.ename == "UsageError" and "not one in Azure: az://site/chorus_manifest.sqlite?sv=***&sig=***" \
        in failed.value.evalue, failed.value.evalue
    assert "chorus-batch review --db az://" in failed.value.evalue
    shown = json.dumps(outputs(nbformat.read(out, as_version=4)))  # (the parameters cell holds what was typed)
    assert "SECRETSIGNATURE" not in shown and "not one in Azure" in shown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb"]


def test_a_manifest_under_the_home_folder_is_not_named_by_the_review_it_shares(manifests, tmp_path):
    """`chorus-batch review --db ~/m.sqlite` wrote "/home/alice/m.sqlite" into the executed notebook four times (its
    parameters cell, the papermill metadata, the "manifest" line and the commands it suggests), though the kernel's own
    prefix is written '~': the copy a reviewer attaches named their home folder. The manifest is written '~/m.sqlite',
    which open_manifest and --db read back: the command the notebook suggests still works as pasted."""
    home = tmp_path / "alice"
    home.mkdir()
    db = home / "m.sqlite"
    with sqlite3.connect(manifests["single"]) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    runtime = {name: str(tmp_path / name.lower()) for name in
               ("JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR")}
    env = {**os.environ, **runtime, "HOME": str(home)}  # (the kernel writes nothing of its own into that home)
    out = tmp_path / "review.ipynb"
    done = cli("review", "--db", str(db), "--out", str(out), env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    nb = nbformat.read(out, as_version=4)
    said = check_run(nb, PLOTS)
    assert str(home) not in out.read_text(), [line for line in out.read_text().splitlines() if str(home) in line]
    assert "manifest   ~/m.sqlite\n" in said and nb.metadata["papermill"]["parameters"]["manifest"] == "~/m.sqlite"
    # the version is not validated: the notebook suggests the command that checks it, which reads the same manifest
    command = re.search(r"chorus-batch validate --db \S+", said).group(0)
    assert command == "chorus-batch validate --db '~/m.sqlite'", said
    versions = cli("versions", *shlex.split(command)[2:4], env=env, cwd=tmp_path)
    assert versions.returncode == 0 and versions.stdout.count("\n") == 3, versions.stderr


def test_the_notebooks_counts_are_grouped_as_the_reports(tmp_path):
    """The notebook said "1000 empty files" and "CHECK  no empty files: 1000 empty" where the HTML report says
    "1,000": both write their counts with units.counted and units.number (the report's _n and _num are those)."""
    from chorus_batch.report import html
    from chorus_batch.units import counted, number

    assert counted(3006, "scan error") == "3,006 scan errors" and counted(1, "file") == "1 file"
    assert number(3006) == "3,006" and number(2.25) == "2.2" and number(None) == "" and number(float("nan")) == ""
    assert html._n is counted and html._num is number
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    for i in range(1000):
        write(site, f"notes/e{i:04}.txt", b"")  # empty, and fit no pattern
    run_site(site, db, validate_site=False)
    out = check_run(execute(db, tmp_path / "out.ipynb"), PLOTS - 2 + 1)  # no sessions; unparseable paths
    assert "1,000 empty files, " in out and "CHECK  no empty files: 1,000 empty\n" in out, out
    assert "; 1,000 current unparseable paths\n" in out and "no unparseable paths: 1,000 current paths" in out
    assert "1000" not in out.replace(str(db), ""), [line for line in out.splitlines() if "1000" in line]
    # a site without waveforms: "OK  waveform sessions: plausible ...: 0 of 0 sessions with a known start ... start
    # outside 1980..", of sessions there are none of
    assert "OK     waveform sessions: plausible starts and durations: no waveform sessions in this version\n" in out, out


def test_a_relative_manifest_is_named_tidied(single_reviewed, monkeypatch):
    """`papermill -p manifest ../m1.sqlite` run from another folder printed "manifest   /x/other/../m1.sqlite" and
    suggested commands with that path: the reader's path is absolute and tidied (its folders resolved)."""
    monkeypatch.setenv("HOME", str(single_reviewed["home"]))  # the kernel's (check_run: its prefix as it names it)
    tmp_path = single_reviewed["tmp"]  # (executed from tmp_path/other with manifest "../m1.sqlite")
    said = check_run(single_reviewed["nb"], PLOTS)
    assert f"manifest   {single_reviewed['named']}\n" in said, said[:400]
    assert "/../" not in said and "/other/.." not in said
    assert open_manifest(f"{tmp_path}/other/../m1.sqlite").path == tmp_path.resolve() / "m1.sqlite"


def test_the_default_manifest_missing_is_told_to_be_set_in_the_parameters_cell(tmp_path):
    """Opened in Jupyter with the default `manifest` (none in notebooks/), the error's fix said "pass the manifest file
    written by `chorus-batch run` (--db)": a reviewer in Jupyter passes no --db. It says to set `manifest` in the
    parameters cell, and from which folder a relative path is read; a script's open_manifest() names itself."""
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(str(NOTEBOOK), str(out), kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    said = failed.value.evalue
    assert failed.value.ename == "UsageError" and f"no manifest at {tmp_path.resolve()}/chorus_manifest.sqlite" in said
    assert "set `manifest` in the notebook's parameters cell" in said and "--db" not in said, said
    assert f"read from the notebook's folder, {home_relative(str(tmp_path.resolve()))}" in said, said
    with pytest.raises(UsageError, match=r"give Manifest\(\) or open_manifest\(\) the manifest's path"):
        open_manifest(tmp_path / "none.sqlite")  # (a library call: the library's words; the commands say --db)


@pytest.mark.parametrize("folder", [False, True])
def test_review_out_ending_with_a_separator_suggests_the_file_meant(manifests, tmp_path, folder):
    """`review --out r.ipynb/` was told "give a file name, e.g. report.html" (the report's example): it is told the
    path without the separator, or, where that is a folder, a notebook file in it."""
    if folder:
        (tmp_path / "r.ipynb").mkdir()
    done = cli("review", "--db", str(manifests["single"]), "--out", "r.ipynb/", cwd=tmp_path)
    assert done.returncode == 2 and "ends with a separator: it names no file" in done.stderr, done.stderr
    assert "report.html" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert ("e.g. r.ipynb/review.ipynb" if folder else "without the trailing separator: r.ipynb") in done.stderr


def test_the_runs_that_committed_nothing_are_listed_and_a_failed_latest_run_is_a_check(reviewed, tmp_path):
    """A cron job refused every night since the version (an emptied root): the notebook showed versions only, a quiet
    site. It lists the failed runs with what to do, and the checklist says CHECK; a clean manifest says OK."""
    from chorus_batch.errors import MassRemovalRefused

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "000001/Waveforms/000001_20200101_000100_3600_0001.dat", b"w")
    run_site(site, db)
    shutil.rmtree(site / "000001")  # the root is there, empty: a file system not mounted
    for _night in range(2):
        with pytest.raises(MassRemovalRefused):
            run_site(site, db)
    nb = execute(db, tmp_path / "review.ipynb")
    out = text(nb)
    assert "runs since the first run: 3 runs, 1 committed a version, 2 failed" in out
    assert re.search(r"CHECK  latest run: started \S+: exit code 5, refused: it would remove too many files", out), out
    assert "--max-delete all" in out and "lists no files" in out

    clean = check_run(reviewed("two"), PLOTS)
    assert re.search(r"OK     latest run: started \S+: exit code [01], version \d+ committed", clean), clean[-2000:]
    parquet = check_run(reviewed("parquet"), PLOTS)
    assert "SKIP   latest run: runs not recorded in a snapshot folder" in parquet


def test_a_date_after_the_latest_version_says_the_latest_is_shown_and_one_before_the_first_says_there_was_none(
        manifests, tmp_path):
    """`version` given as a date after the latest version's commit (a date in the future) reviewed the latest
    version without a word, as if it were the version of that date. The notebook says which version a time
    selected, and that none came after the latest; a time in another zone selects the version in force at that
    instant (read in UTC); a date before the first version says there was none, without a traceback."""
    versions = open_manifest(manifests["two"]).versions()
    first, second = versions["label"].to_list()
    out = check_run(execute(manifests["two"], tmp_path / "future.ipynb", version="2099-01-01"), PLOTS + 2)
    assert (f"NOTE       as of 2099-01-01 (a time in the future): no version was committed after {second} (committed "
            f"{versions['finished_at'][1]}), so the latest version, {second}, is shown") in out, out
    # the first version's commit, written in UTC+09:00: that version, said as the one in force then
    from datetime import datetime, timedelta, timezone
    at = datetime.fromisoformat(versions["finished_at"][0].replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=9)))
    out = check_run(execute(manifests["two"], tmp_path / "zone.ipynb", version=at.isoformat()), PLOTS)
    if versions["finished_at"][0] != versions["finished_at"][1]:
        assert f"reviewing  {first}:" in out and f"as of {at.isoformat()}: version {first}, committed " in out, out
    else:  # (both committed within one second, as a fast machine makes them: that instant is after the latest)
        assert f"reviewing  {second}:" in out and f"as of {at.isoformat()}: no version was committed after {second}" in out, out
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute(manifests["two"], tmp_path / "past.ipynb", version="2000-01-01")
    assert failed.value.ename == "UsageError" and "no version was committed at or before 2000-01-01" in failed.value.evalue
    errors = [o for o in outputs(nbformat.read(tmp_path / "past.ipynb", as_version=4)) if o["output_type"] == "error"]
    shown = "\n".join(errors[0]["traceback"])
    assert f"the first version is {first}" in shown and "Traceback" not in shown and "File " not in shown, shown


def test_review_of_a_date_in_the_future_says_it_reviews_the_latest_version(manifests, review_of_the_future_to_stdout):
    """`chorus-batch review --version 2099-01-01` passes the notebook the label it resolved: the command says on
    stderr that no version came after the latest, which is reviewed."""
    label = open_manifest(manifests["single"]).versions()["label"][-1]
    done, _ = review_of_the_future_to_stdout  # (`--out -`: the notebook on stdout, what the command says on stderr)
    stderr = done.stderr.decode("cp1252")
    assert done.returncode == 0, stderr
    assert (f"chorus-batch: as of 2099-01-01 (a time in the future): no version was committed after {label}"
            f" (committed ") in stderr and f"so the latest version, {label}, is shown" in stderr, stderr
