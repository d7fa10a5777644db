"""Friendly at the terminal and under the scheduler (issue 16), as a user runs the command line: no silent demo,
--version, "did you mean" for commands, flags and settings, and plurals that read right."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conftest import ROOT, cli, query, write

DEMO_DB = "chorus_demo_manifest.sqlite"


def cli_on_a_terminal(*args: str, cwd: Path, columns: int = 120, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The real command line with a terminal (a pty) as stdin, stdout and stderr: what a person sees. `columns`:
    the width the terminal reports (0: none, as `script` without `stty cols`)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40 if columns else 0, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", *args], cwd=cwd, stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, **(env or {})})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the command and its workers closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- no silent demo


@pytest.mark.parametrize("args", [("run",), ()], ids=["run", "no-command"])
def test_run_with_no_site_is_a_usage_error_naming_site_chorus_toml_and_demo(tmp_path, args):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    for word in ("--site", "chorus.toml", "--demo"):
        assert word in out.stderr
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was written: no demo manifest


@pytest.mark.skipif(os.name == "nt", reason="pty")
def test_run_with_no_site_is_the_same_usage_error_on_a_terminal(tmp_path):
    code, out = cli_on_a_terminal("run", cwd=tmp_path)
    assert code == 2
    assert "--site" in out and "chorus.toml" in out and "--demo" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name == "nt", reason="pty")
def test_on_a_terminal_that_reports_no_width_progress_is_said_in_timestamped_lines(tmp_path):
    """`script` without `stty cols` gives a terminal of 0 columns: tqdm drew nothing there, and a 9-second hashing
    stage showed no progress at all. With no width, progress is the log's timestamped lines, as under cron."""
    env = {"CHORUS_BATCH_PROGRESS_S": "0"}  # (a line at each stage's end however short it is)
    code, out = cli_on_a_terminal("run", "--demo", "--no-validate", cwd=tmp_path, columns=0, env=env)
    assert code in (0, 1), out
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* chorus-batch: hashing: .* files?, .*done in ", out, re.M), out
    # a terminal with a width keeps its bar (no such line)
    (tmp_path / "wide").mkdir()
    code, out = cli_on_a_terminal("run", "--demo", "--no-validate", cwd=tmp_path / "wide", columns=120, env=env)
    assert code in (0, 1), out
    assert not re.search(r"chorus-batch: hashing: .*done in ", out), out


@pytest.mark.skipif(os.name == "nt", reason="pty")
def test_run_demo_on_a_terminal_writes_the_demo_manifest_and_progress_never_glues_the_unit(tmp_path):
    code, out = cli_on_a_terminal("run", "--demo", "--no-validate", cwd=tmp_path)
    assert code == 0, out
    assert "demo site" in out and str(tmp_path / DEMO_DB) in out
    assert query(tmp_path / DEMO_DB, "SELECT count(*) FROM source_files")[0][0] > 30
    assert "listing: 0 files" in out  # tqdm's first line on a terminal
    assert not re.search(r"[\d?](files?)\b", out), out  # never "0files" or "?files/s"


def test_run_demo_without_a_terminal_is_the_same_demo(tmp_path):
    out = cli("run", "--demo", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "demo site" in out.stdout and str(tmp_path / DEMO_DB) in out.stdout
    assert query(tmp_path / DEMO_DB, "SELECT count(*) FROM versions")[0][0] == 1


def test_demo_does_not_go_with_a_site(tmp_path):
    out = cli("run", "--demo", "--site", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "--demo" in out.stderr and "--site" in out.stderr
    assert not (tmp_path / DEMO_DB).exists()


def test_read_only_commands_say_when_they_read_the_demo_manifest_and_run_never_writes_it(tmp_path):
    assert cli("run", "--demo", "--no-validate", "-q", cwd=tmp_path).returncode == 0
    out = cli("versions", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"demo's manifest {tmp_path / DEMO_DB}" in out.stderr
    assert DEMO_DB in cli("versions", "--help").stdout  # and their help says so
    site = tmp_path / "site"
    write(site, "OMOP/a.csv")
    assert cli("run", "--site", str(site), "--no-validate", "-q", cwd=tmp_path).returncode == 0
    assert query(tmp_path / "chorus_manifest.sqlite", "SELECT count(*) FROM source_files")[0][0] == 1
    assert query(tmp_path / DEMO_DB, "SELECT count(*) FROM versions")[0][0] == 1  # the demo's manifest untouched
    out = cli("versions", cwd=tmp_path)  # the site's manifest is there now: read, without a word about the demo
    assert out.returncode == 0 and "demo" not in out.stderr


@pytest.mark.parametrize("db", [None, "elsewhere/demo.sqlite"])
def test_the_commands_run_demo_suggests_next_read_its_manifest(tmp_path, db):
    """`status --demo` (what a user tries after `run --demo`) was 'unrecognized argument --demo', and `status` alone
    read the demo's manifest but said 'no site given'. run --demo now names commands that work, and they do."""
    import shlex

    before = cli("versions", "--demo", cwd=tmp_path)
    assert before.returncode == 2 and "chorus-batch run --demo" in before.stderr, before.stderr
    with_db = [] if db is None else ["--db", db]
    if db:
        (tmp_path / "elsewhere").mkdir()
    out = cli("run", "--demo", *with_db, "--no-validate", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    suggested = out.stdout.split("Look at it (from this folder) with: ", 1)[1].split("\n", 1)[0].split(", ")
    assert len(suggested) >= 3 and any(line.startswith("chorus-batch status --demo") for line in suggested)
    for line in suggested:
        argv = shlex.split(line)
        assert argv[:1] == ["chorus-batch"] and "--demo" in argv
        done = cli(*argv[1:], "-q", cwd=tmp_path)
        assert done.returncode == 0, (line, done.stderr)
        assert "Traceback" not in done.stderr
    assert (tmp_path / "report.html").stat().st_size > 0
    if db is None:  # the demo's manifest read by default: status checks the demo site against it
        done = cli("status", "-q", cwd=tmp_path)
        assert done.returncode == 0 and "demo's manifest" in done.stderr, done.stderr
    assert cli("status", "--demo", "--site", str(tmp_path), cwd=tmp_path).returncode == 2


def test_the_command_a_run_names_for_its_findings_works_pasted_in_another_folder(tmp_path):
    """A nightly run (`run --config /srv/chorus.toml` from cron, in the home folder) ended its summary with
    "(chorus-batch validate --json lists them all)": pasted where the log is read, that found no manifest (exit 2).
    And a dry run named it too, though `validate` lists the committed version's findings, not the dry run's."""
    import json
    import shlex

    assert cli("testdata", str(tmp_path / "t"), "--persons", "2", "--files-per-person", "4").returncode == 0
    (tmp_path / "srv").mkdir()
    (tmp_path / "t" / "first").rename(tmp_path / "srv" / "site")
    (tmp_path / "srv" / "chorus.toml").write_text('[site]\nroot = "site"\n[manifest]\ndb = "m.sqlite"\n')
    (tmp_path / "srv" / "site" / "OMOP" / "person.csv").write_text("x\n1\n")  # a finding: no person_id column
    home = tmp_path / "home"
    home.mkdir()
    out = cli("run", "--config", str(tmp_path / "srv" / "chorus.toml"), cwd=home)
    assert out.returncode == 1, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("validation: "))
    command = line.split(" (", 1)[1].removesuffix(" lists them all)")
    argv = shlex.split(command)
    assert argv[:2] == ["chorus-batch", "validate"] and "--json" in argv, line
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = cli(*argv[1:], cwd=elsewhere)
    assert listed.returncode == 1, listed.stderr
    assert "omop.missing_key" in {f["rule"] for f in json.loads(listed.stdout)["findings"]}
    (tmp_path / "srv" / "site" / "OMOP" / "person.csv").write_text("person_id\n1\n")  # fixed: the dry run's differ
    dry = cli("run", "--config", str(tmp_path / "srv" / "chorus.toml"), "--dry-run", cwd=home)
    said = next(line for line in dry.stdout.splitlines() if line.startswith("validation: "))
    assert said.endswith("(--json lists them all)") and "chorus-batch validate" not in dry.stdout, dry.stdout


# ----------------------------------------------------------------------------- --version


def test_version_prints_the_version_and_exits_0():
    from importlib.metadata import PackageNotFoundError, version

    import chorus_batch

    try:
        expected = version("chorus-batch")
    except PackageNotFoundError:
        expected = chorus_batch.__version__
    out = cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"chorus-batch {expected}"


# ----------------------------------------------------------------------------- did you mean


def test_a_misspelt_flag_suggests_the_commands_own_option(tmp_path):
    out = cli("run", "--stie", "/x", cwd=tmp_path)
    assert out.returncode == 2
    assert "unrecognized argument --stie; did you mean --site?" in out.stderr
    out = cli("versions", "--jsno", cwd=tmp_path)
    assert out.returncode == 2 and "did you mean --json?" in out.stderr


def test_a_flag_the_command_does_not_have_suggests_nothing_unlike(tmp_path):
    # `versions --site` was answered "did you mean --quiet?" and `run --out` "did you mean --account?": the
    # dashes both share made unrelated flags look close (the commands that do take the flag are named instead)
    for args, flag in ((("versions", "--site", "x"), "--site"), (("run", "--out", "x"), "--out")):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and f"unrecognized argument {flag} ({flag} is an option of " in out.stderr, out.stderr
        assert "did you mean" not in out.stderr, out.stderr
    out = cli("run", "--dryrun", cwd=tmp_path)
    assert "did you mean --dry-run?" in out.stderr, out.stderr


def test_a_version_or_path_flag_another_command_takes_is_answered_with_this_ones(tmp_path):
    """`files` asks --as-of, `changes`, `report`, `review` and `registry` --version: `files --version V` was answered
    "did you mean --person?" and `changes --as-of V` with nothing; `history --path P` (files and changes take --path)
    did not say the path is given without it."""
    for args, said in ((("files", "--version", "v1"), "unrecognized argument --version; did you mean --as-of?"),
                       (("changes", "--as-of", "v1"), "unrecognized argument --as-of; did you mean --version?"),
                       (("report", "--as-of=v1", "--out", "r.html"), "did you mean --version?"),
                       # the question in other words: `files --at V` was answered "did you mean --path?"
                       (("files", "--at", "v1"), "unrecognized argument --at; did you mean --as-of?"),
                       (("changes", "--at", "v1"), "unrecognized argument --at; did you mean --version?"),
                       (("history", "--path", "OMOP/person.csv"),
                        "unrecognized argument --path; the path is given without it: chorus-batch history PATH")):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and said in out.stderr and "--person" not in out.stderr.splitlines()[-1], out.stderr


def test_a_misspelt_command_suggests_the_command(tmp_path):
    out = cli("rnu", cwd=tmp_path)
    assert out.returncode == 2
    assert "did you mean 'run'?" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("argv, said", [
    # the site's folder given without --site, and `help` (as git and pip take it), were only "unknown command"
    (["the site", "--db", "m.sqlite"], "unknown command 'the site'; to run on that folder: chorus-batch run --site "
                                       "'the site' --db m.sqlite (commands: run, status"),
    (["help"], "unknown command 'help'; for help: chorus-batch --help (commands: "),
    (["help", "upload"], "unknown command 'help'; for help: chorus-batch upload --help (commands: "),
    (["C:\\site"], "unknown command 'C:\\site' (commands: "),  # (named as typed, its backslash not doubled)
])
def test_an_unknown_command_says_what_was_probably_meant(tmp_path, monkeypatch, capsys, argv, said):
    from chorus_batch.cli import _parse, _parser

    (tmp_path / "the site").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        _parse(_parser(), argv)
    assert refused.value.code == 2 and said in capsys.readouterr().err


def test_a_commands_flag_before_any_command_is_run_and_before_a_command_is_put_after_it(tmp_path, site):
    # `chorus-batch --site DIR` said "unknown command 'DIR'", though `chorus-batch` alone runs: it runs.
    (site / "OMOP").mkdir()
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n")
    db = tmp_path / "m.sqlite"
    out = cli("--site", str(site), "--db", str(db), "--no-validate", cwd=tmp_path)
    assert out.returncode == 0 and "committed to" in out.stdout, out.stderr
    # Before a command word, the flag goes after it; the command to type is given, quoted for the shell.
    out = cli("-q", "--db", "my manifest.sqlite", "versions", "--json", cwd=tmp_path)
    assert out.returncode == 2 and "unknown command" not in out.stderr, out.stderr
    assert ("--db comes before the command 'versions'; flags go after it: "
            "chorus-batch versions -q --db 'my manifest.sqlite' --json") in out.stderr


@pytest.mark.parametrize("argv, said", [
    (["--json", "versions"], "--json comes before the command 'versions'; flags go after it: chorus-batch versions --json"),
    (["--db=m.sqlite", "-q", "changes", "--csv"],
     "--db=m.sqlite comes before the command 'changes'; flags go after it: chorus-batch changes --db=m.sqlite -q --csv"),
])
def test_a_flag_without_a_value_before_its_command_is_put_after_it(tmp_path, argv, said):
    # `chorus-batch --json versions` said "unrecognized argument --json; did you mean --json?"
    out = cli(*argv, cwd=tmp_path)
    assert out.returncode == 2 and said in out.stderr, out.stderr
    assert "did you mean" not in out.stderr


@pytest.mark.parametrize(
    "toml, message",
    [
        # the fix said "rename it to 'run.workers'", which under [run] is run.run.workers
        ("[run]\nworker = 4\n", "unknown setting 'run.worker'; did you mean 'run.workers'?\n  where: chorus.toml, line 2: [run] worker\n"
                                 "  fix:   rename it to 'workers' in [run] ("),
        # beside the setting it is close to, it was told to "rename it to 'workers'": then given twice, which TOML refuses
        ("[run]\nworkers = 8\nworker = 4\n", "unknown setting 'run.worker', beside 'run.workers', which is also set\n"
                                              "  where: chorus.toml, line 3: [run] worker\n  fix:   remove worker (the run reads "
                                              "workers), or remove workers and rename worker to it ("),
        # a section was said as a setting ("unknown setting 'sit'"), and one nothing is close to as a setting "at the
        # top of the file, before any [section]"
        ('[sit]\nroot = "x"\n', "unknown section [sit]; did you mean [site]?\n  where: chorus.toml, line 1: [sit]\n"
                                 "  fix:   rename it to [site]"),
        ("[zzzqq]\nx = 1\n", "unknown section [zzzqq]\n  where: chorus.toml, line 1: [zzzqq]\n  fix:   remove it"),
        ('[azure]\nacount_url = "https://a.blob.core.windows.net"\n',
         "unknown setting 'azure.acount_url'; did you mean 'azure.account_url'?"),
        # the plural of a setting (it was "did you mean 'run.default_excludes'?", an on/off setting that then refused
        # the list), and the words other tools use for one (no spelling close: "unknown setting 'manifest.database'")
        ('[run]\nexcludes = ["*.tmp"]\n', "unknown setting 'run.excludes'; did you mean 'run.exclude'?"),
        ('[manifest]\ndatabase = "m.sqlite"\n', "unknown setting 'manifest.database'; did you mean 'manifest.db'?"),
        ('[manifest]\npath = "m.sqlite"\n', "unknown setting 'manifest.path'; did you mean 'manifest.db'?"),
        ('[site]\npath = "/data/site"\n', "unknown setting 'site.path'; did you mean 'site.root'?"),
        ("[run]\nthreads = 4\n", "unknown setting 'run.threads'; did you mean 'run.workers'?"),
        ('[central]\ncontainer = "az://mgh/"\n', "unknown setting 'central.container'; did you mean 'central.to'?"),
        # written above its [section]: it said "unknown setting 'workers'", where "[workers]", and "remove it"
        ("workers = 8\n[run]\nmode = 'full'\n", "unknown setting 'workers' at the top of the file, before any "
                                                 "[section]; did you mean 'run.workers' or 'central.workers'?"),
        ('root = "x"\n', "did you mean 'site.root'?\n  where: chorus.toml, line 1, top level (above the first [section])\n"
                          "  fix:   move it under [site]"),
        # misspelt too, and above every section: it was placed in a section "[wrkers]" of its own
        ("wrkers = 8\n", "unknown setting 'wrkers' at the top of the file, before any [section]; did you mean "
                          "'run.workers' or 'central.workers'?\n  where: chorus.toml, line 1, top level (above the first "
                          "[section])\n  fix:   rename it and move it under [run] or [central]"),
        ("zzzqq = 1\n", "unknown setting 'zzzqq' at the top of the file, before any [section]\n"
                         "  where: chorus.toml, line 1, top level (above the first [section])\n  fix:   remove it"),
        # a setting of another [section] (exclude under [site], where [run] was meant): it said "remove it", and the
        # setting was dropped rather than moved
        ('[site]\nroot = "x"\nexclude = ["*.tmp"]\n', "unknown setting 'site.exclude': exclude is a setting of [run], "
                                                       "not of [site]; did you mean 'run.exclude'?\n  where: chorus.toml, "
                                                       "line 3: [site] exclude\n  fix:   move exclude = ... under [run]"),
        ("[manifest]\nworkers = 2\n", "workers is a setting of [run] or [central], not of [manifest]; did you mean "
                                       "'run.workers' or 'central.workers'?"),
        # misspelt too, under another [section]: it said "unknown setting 'site.wrkers'", fix "remove it"
        ('[site]\nroot = "x"\nwrkers = 4\n', "unknown setting 'site.wrkers'; did you mean 'run.workers' or "
                                              "'central.workers'? (workers is a setting of [run] or [central], not of "
                                              "[site])\n  where: chorus.toml, line 3: [site] wrkers\n  fix:   rename it "
                                              "to workers and move it under [run] or [central]"),
        ('[manifest]\ndb = "m.sqlite"\nexclud = ["*.tmp"]\n', "did you mean 'run.exclude'? (exclude is a setting of "
                                                               "[run], not of [manifest])"),
        # a modality misspelt or in another case: it named the [section]'s line ("[site] roots") and no modality meant
        ('[site]\nroot = "x"\n\n[site.roots]\nImages = "i"\nWavefroms = "w"\n',
         "unknown modality 'Wavefroms'; did you mean 'Waveforms'? (the modalities: OMOP, Metadata, Waveforms, Images; "
         "their names are case-sensitive)\n  where: chorus.toml, line 6: [site.roots] Wavefroms\n"),
        ('[site]\nroot = "x"\n[patterns]\nwaveforms = ["^x$"]\n',
         "unknown modality 'waveforms'; did you mean 'Waveforms'?"),
        # a section written as an array of tables: "where: chorus.toml [run]", no line
        ('[site]\nroot = "x"\n\n[[run]]\nworkers = 4\n', "invalid setting 'run': is a list of tables (written [[run]], "
                                                          "with double brackets"),
        # the name of the site written below [site.roots], which holds it: it was "unknown modality 'name'"
        ('[site]\nroot = "x"\n[site.roots]\nWaveforms = "w"\nname = "site-a"\n',
         "name = ... below [site.roots] is read as the root of a modality 'name': a [section] holds every line below "
         "it up to the next one; write it under [site], above [site.roots]\n  where: chorus.toml, line 3: [site] roots"),
    ],
)
def test_a_misspelt_setting_suggests_the_setting_and_points_at_help_that_exists(tmp_path, toml, message):
    (tmp_path / "chorus.toml").write_text(toml)
    out = cli("run", cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert 'the README\'s section "Configuration: chorus.toml"' in out.stderr
    assert "\n## Configuration: `chorus.toml`\n" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "run --help" not in out.stderr


@pytest.mark.parametrize(
    "toml, args, what, where",
    [
        # a modality root that is not there: "where: [site.roots] Waveforms", neither file nor line
        ('[site]\nroot = "site"\n\n[site.roots]\nWaveforms = "gone"\n', ("run",),
         "root is not a readable directory", "chorus.toml, line 5: [site.roots] Waveforms"),
        # roots inside each other
        ('[site]\nroot = "site"\n[site.roots]\nImages = "site/000001"\n', ("status",),
         "lies inside --site / [site] root", "chorus.toml, line 4: [site.roots] Images"),
        # the site root of the file: "where: --site / [site] root", as if --site had been given
        ('# the site\n[site]\nroot = "gone"\n', ("run",), "site root is not a readable directory",
         "chorus.toml, line 3: [site] root"),
        # an exclusion glob of [run] exclude: "where: --exclude / exclude in [run]"
        ('[site]\nroot = "site"\n[run]\nworkers = 1\nexclude = ["*.tmp", "../x"]\n', ("run",),
         "invalid exclusion glob '../x'", "chorus.toml, line 5: [run] exclude"),
        # a path pattern: "where: chorus.toml [patterns] Waveforms[0]"
        ('[site]\nroot = "site"\n[patterns]\nWaveforms = ["^(x"]\n', ("run",), "invalid path pattern",
         "chorus.toml, line 4: [patterns] Waveforms[0]"),
        # [manifest] parquet refused after the file was read: "where: --parquet / [manifest] parquet", no --parquet given
        ('[site]\nroot = "site"\n[manifest]\nparquet = " snaps"\n', ("run",),
         "the snapshot folder's name starts with white space", "chorus.toml, line 4: [manifest] parquet"),
        # a glob refused for its backslash is quoted as written ('a\b'), not as repr gives it: "where: --exclude / ..."
        ("[site]\nroot = \"site\"\n[run]\nexclude = ['a\\b']\n", ("run",),
         "invalid exclusion glob 'a\\b'", "chorus.toml, line 4: [run] exclude"),
        # [central] to naming no valid container: taken by `run` (never refused), and by `upload` refused only after
        # the manifest was opened, as "where: --to / [central] to"
        ('[site]\nroot = "site"\n[central]\nto = "az://UPPER/"\n', ("run",),
         "'UPPER' is not a valid Azure container name", "chorus.toml, line 4: [central] to"),
        ('[site]\nroot = "site"\n[central]\nto = "az://a_b/"\n', ("upload", "--dry-run"),
         "'a_b' is not a valid Azure container name", "chorus.toml, line 4: [central] to"),
        # [manifest] db that is a device: "--db names a device", "where: /dev/null", with no --db given
        ('[site]\nroot = "site"\n[manifest]\ndb = "/dev/null"\n', ("versions",),
         "[manifest] db names a device, not a manifest file: /dev/null", "chorus.toml, line 4: [manifest] db (/dev/null)"),
    ],
)
def test_a_setting_refused_after_the_file_was_read_is_named_with_its_file_and_line(tmp_path, toml, args, what, where):
    write(tmp_path / "site", "000001/Waveforms/Telemetry/1/1.hea", b"1 1 250 10\n")
    (tmp_path / "chorus.toml").write_text(toml)
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert what in out.stderr
    assert f"\n  where: {where}\n" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_section_written_as_an_array_of_tables_is_named_with_its_line(tmp_path):
    (tmp_path / "chorus.toml").write_text('[site]\nroot = "x"\n\n[[run]]\nworkers = 4\n')
    out = cli("run", cwd=tmp_path)
    assert out.returncode == 2 and "\n  where: chorus.toml, line 4: [run]\n" in out.stderr, out.stderr


def test_a_setting_the_command_line_gave_is_named_as_the_flag_not_as_the_file(tmp_path):
    (tmp_path / "chorus.toml").write_text('[site]\nroot = "gone"\n[manifest]\ndb = "m.sqlite"\n[run]\nexclude = ["*.tmp"]\n')
    out = cli("run", "--site", str(tmp_path / "other"), cwd=tmp_path)
    assert out.returncode == 2 and "\n  where: --site / [site] root\n" in out.stderr, out.stderr
    out = cli("run", "--exclude", "../y", cwd=tmp_path)
    assert out.returncode == 2 and "\n  where: --exclude / exclude in [run]\n" in out.stderr, out.stderr
    out = cli("versions", "--db", "/dev/null", cwd=tmp_path)
    assert out.returncode == 2 and "--db names a device" in out.stderr and "\n  where: /dev/null\n" in out.stderr
    (tmp_path / "chorus.toml").write_text('[manifest]\ndb = "m.sqlite"\nparquet = "snaps"\n[central]\nto = "az://mgh/"\n')
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    assert cli("run", "--site", str(tmp_path / "site"), "--no-validate", cwd=tmp_path).returncode == 0
    out = cli("upload", "--dry-run", "--to", "az://UPPER/", cwd=tmp_path)
    assert out.returncode == 2 and "\n  where: --to / [central] to\n" in out.stderr, out.stderr
    out = cli("run", "--site", str(tmp_path / "site"), "--parquet", " x", cwd=tmp_path)
    assert out.returncode == 2 and "\n  where: --parquet" in out.stderr and "line" not in out.stderr, out.stderr


# ----------------------------------------------------------------------------- plurals


def test_the_summary_says_1_file_and_1_error(site, db):
    write(site, "stray.txt")  # one file, hashed; one unparseable path; findings
    out = cli("run", "--site", str(site), "--db", str(db))
    assert out.returncode == 1, out.stderr
    assert "hashed: 1 file," in out.stdout
    assert re.search(r"^validation: \d+ errors?, \d+ warnings?, \d+ notes?", out.stdout, re.M)
    assert not re.search(r"\b1 (files|errors|warnings|notes|persons)\b", out.stdout), out.stdout
    assert not re.search(r"\b(0|[2-9]|\d\d+) (file|error|warning|note|person)\b(?!/)", out.stdout), out.stdout


def test_plural():
    from chorus_batch.units import plural

    assert [plural(n, "error") for n in (0, 1, 2)] == ["0 errors", "1 error", "2 errors"]
    assert plural(1, "file") == "1 file" and plural(3, "entry", "entries") == "3 entries"


def test_words_of_a_finding_agree_with_their_count():
    """Findings built in polars said "1 row(s) have", "column(s) x are": frames.fmt's "{one|many}" agrees with the
    count before it, or with n= (a list's length)."""
    import polars as pl
    from chorus_batch.frames import fmt

    rows = pl.DataFrame({"k": [0, 1, 3, None], "ids": [[], ["7"], ["7", "8", "9"], ["1"]]})
    said = rows.select(fmt("{} row{|s} {has|have} it", "k"), fmt("id{|s} {} {is|are} unknown", pl.col("ids").list.join(", "),
                                                                  n=pl.col("ids").list.len()).alias("b"))
    assert said.rows() == [("0 rows have it", "ids  are unknown"), ("1 row has it", "id 7 is unknown"),
                           ("3 rows have it", "ids 7, 8, 9 are unknown"), (None, "id 1 is unknown")]
    with pytest.raises(ValueError, match="no count"):
        fmt("row{|s} {}", "k")


def test_no_message_of_the_tool_says_a_plural_in_brackets():
    """Every count of a message is said in the plural or the singular ("1 row", "2 rows"), not as "row(s)": a text
    written with "(s)" anywhere in the package (a string, not a comment or a docstring) names where."""
    import io
    import tokenize

    package = Path(__file__).resolve().parents[1] / "chorus_batch"
    found = []
    for path in sorted(package.rglob("*.py")):
        for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
            text = token.string.lstrip("rbfuRBFU")
            if (token.type == tokenize.STRING and not text.startswith(('"""', "'''"))
                    and re.search(r"\b(?!http\(|repr\()\w+\(s\)", text)):
                found.append(f"{path.relative_to(package)}:{token.start[0]}")
    assert not found, found


@pytest.fixture
def batch_progress(caplog):
    """Progress as a batch job's log shows it (not a terminal: log lines), the lines caught by caplog."""
    from chorus_batch.progress import Progress

    class NotATerminal:
        def isatty(self) -> bool:
            return False

    caplog.set_level(logging.INFO, logger="chorus_batch")
    logger = logging.getLogger("chorus_batch")
    logger.addHandler(caplog.handler)  # it may not propagate (setup_logging)
    try:
        yield Progress(stream=NotATerminal(), interval_s=0)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(caplog.handler)


def test_progress_lines_in_a_batch_log_say_1_file_and_3_files(batch_progress, caplog):
    for items in (1, 3):
        with batch_progress.counter("listing", "file", lambda n=items: (n, 0)):
            time.sleep(0.5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("listing:")]
    assert any(line.startswith("listing: 1 file, ") for line in lines), lines
    assert any(line.startswith("listing: 3 files, ") for line in lines), lines


def test_the_notebooks_output_is_ignored_by_git():
    assert "out.ipynb" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_a_person_filter_that_finds_nothing_suggests_the_ids_it_may_mean(tmp_path):
    from chorus_batch.testdata import Spec, make_testdata

    make_testdata(tmp_path / "td", Spec(persons=3))
    db = tmp_path / "m.sqlite"
    assert cli("run", "--site", str(tmp_path / "td" / "first"), "--db", str(db), "--no-validate").returncode in (0, 1)
    out = cli("files", "--db", str(db), "--person", "2")
    assert out.returncode == 0 and "0 files" in out.stdout
    assert "person ids are text" in out.stderr and "did you mean 000002?" in out.stderr
    found = cli("files", "--db", str(db), "--person", "000002")
    assert found.returncode == 0 and "person ids are text" not in found.stderr
    # a person who is there, only not in that modality: no "did you mean" (it was said for any empty result)
    assert "person ids are text" not in cli("files", "--db", str(db), "--person", "000002", "--modality", "OMOP").stderr
    # A notebook's files(person=2-as-text) was an empty frame and nothing else: the library says it, as a warning
    from chorus_batch.review import NoSuchPerson, open_manifest

    reader = open_manifest(db)
    for warm in (False, True):  # the narrow query, and the filter over a version already read whole
        if warm:
            reader.files()
        with pytest.warns(NoSuchPerson, match="did you mean 000002"):
            assert reader.files(person="2").height == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reader.files(person="000002").height and reader.files(person="000002", modality="OMOP").height == 0


def test_history_takes_a_path_as_people_type_it(tmp_path):
    from chorus_batch.testdata import Spec, make_testdata

    make_testdata(tmp_path / "td", Spec(persons=2))
    site = tmp_path / "td" / "first"
    db = tmp_path / "m.sqlite"
    assert cli("run", "--site", str(site), "--db", str(db), "--no-validate").returncode in (0, 1)
    for path in (str(site / "OMOP" / "person.csv"), "OMOP\\person.csv", "./OMOP/person.csv", "OMOP/person.csv"):
        out = cli("history", "--db", str(db), path, "--json")
        assert out.returncode == 0, (path, out.stderr)
        assert '"srcfile": "OMOP/person.csv"' in out.stdout.replace('":"', '": "'), path


def test_changes_stops_at_200_rows_as_files_does_and_says_how_to_see_all(tmp_path):
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    for i in range(205):
        write(site, f"OMOP/extra_{i:03d}.csv", b"a\n1\n")
    assert cli("run", "--site", str(site), "--db", str(db), "--no-validate", "-q").returncode in (0, 1)
    for command in ("changes", "files"):
        out = cli(command, "--db", str(db))
        assert out.returncode == 0, out.stderr
        assert "... and 5 more rows (205 in all); --csv or --json lists them all" in out.stdout, command
        assert len(cli(command, "--db", str(db), "--csv").stdout.splitlines()) == 206


def test_a_first_run_on_an_empty_root_is_refused_and_hints_at_the_root(tmp_path):
    """A first run on a root that lists no file (a disk not mounted yet, the wrong folder) said "no first version
    was committed" with exit 0: a nightly cron took it for a quiet night, every night, while the same root once a
    version exists is refused, exit 5. It is refused the same way, and `runs` records the 5; `status` (and
    `run --dry-run`) says the run would be refused."""
    (tmp_path / "empty").mkdir()
    db = tmp_path / "m.sqlite"
    out = cli("run", "--site", str(tmp_path / "empty"), "--db", str(db), "-q")
    assert out.returncode == 5, out.stdout + out.stderr
    assert f"refused: root {tmp_path / 'empty'} lists no files at all, and the manifest holds no version yet; " \
           "nothing was committed" in out.stderr, out.stderr
    assert "check that the site root" in out.stderr and "no changes since" not in out.stdout + out.stderr
    assert "no version was written, and the manifest holds none yet" in out.stderr, out.stderr
    assert query(db, "select exit_code, version from runs") == [(5, None)]
    assert query(db, "select count(*) from versions") == [(0,)]
    as_json = cli("run", "--site", str(tmp_path / "empty"), "--db", str(db), "-q", "--json")
    assert as_json.returncode == 5 and json.loads(as_json.stdout)["exit_code"] == 5, as_json.stdout
    for command in (["status"], ["run", "--dry-run"]):
        dry = cli(*command, "--site", str(tmp_path / "empty"), "--db", str(db), "-q", "--json")
        assert dry.returncode == 5, (command, dry.stderr)
        assert "lists no files at all" in json.loads(dry.stdout)["refused"]["error"], dry.stdout
    assert query(db, "select exit_code from runs") == [(5,), (5,)]  # (the dry runs record nothing)


def test_a_first_run_on_an_empty_root_with_max_delete_all_ends_with_nothing_to_commit(tmp_path):
    """`--max-delete all` passes a root that lists nothing once a version exists; so it does on a first run (a site
    whose files are to come): nothing to commit, exit 0, said as before the first-run refusal."""
    (tmp_path / "empty").mkdir()
    out = cli("run", "--site", str(tmp_path / "empty"), "--db", str(tmp_path / "m.sqlite"), "-q", "--max-delete", "all")
    assert out.returncode == 0, out.stderr
    assert "the site lists no files, so no first version was committed" in out.stdout
    assert "check that the site root" in out.stdout and "no changes since" not in out.stdout


def test_names_with_escape_sequences_or_line_breaks_are_shown_on_a_terminal_not_obeyed(tmp_path):
    """A file named with an escape sequence must not retitle or clear the terminal; a line break in a name must not
    split a row. Piped output keeps the names' own characters (CSV, JSON and --md5sum escape them their own way)."""
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "1/Metadata/evil\x1b]0;PWNED\x07\x1b[2J.txt", b"x")
    write(site, "1/Metadata/two\nlines.txt", b"y")
    db = str(tmp_path / "m.sqlite")
    for args in (("run", "--site", str(site), "--db", db), ("files", "--db", db), ("changes", "--db", db)):
        code, seen = cli_on_a_terminal(*args, cwd=tmp_path)
        assert code in (0, 1), seen
        assert "\x1b]0;PWNED" not in seen and "\x1b[2J" not in seen and "\x07" not in seen, seen
        assert "two\\nlines.txt" in seen and "two\nlines" not in seen, seen
        if args[0] != "run":  # (the run names only the file it could not classify)
            assert "\\x1b]0;PWNED\\x07\\x1b[2J.txt" in seen, seen
    piped = cli("files", "--db", db, "--json")
    assert "evil\\u001b]0;PWNED\\u0007\\u001b[2J.txt" in piped.stdout


def test_a_stage_stopped_by_a_signal_or_an_error_does_not_say_done(batch_progress, caplog):
    """A batch log's last line of a stage that a signal (or an error) ended said "done in": it says "stopped after"."""
    from chorus_batch.errors import Stopped

    with batch_progress.counter("hashing", "file", lambda: (3, 0), total=(8, 0)):
        time.sleep(0.3)
    with pytest.raises(Stopped), batch_progress.counter("hashing", "file", lambda: (3, 0), total=(8, 0)):
        time.sleep(0.3)
        raise Stopped(15)
    last = list(dict.fromkeys(r.getMessage() for r in caplog.records  # (caplog may see a record twice)
                              if "done in" in r.getMessage() or "stopped after" in r.getMessage()))
    assert len(last) == 2 and "3/8 files" in last[0] and "done in" in last[0], last
    assert "stopped after" in last[1] and "done" not in last[1], last


# ----------------------------------------------------------------------------- Ctrl-C while starting


@pytest.mark.parametrize("point", ["start-up", "arguments-read"])
@pytest.mark.parametrize("argv", [["run", "--demo"], ["status", "--demo"], ["files"], ["versions"], ["report", "--out", "r.html"],
                                  ["testdata", "out"], ["import-config", "config.toml"], []])
def test_ctrl_c_while_the_command_line_loads_is_one_line_and_exit_130(tmp_path, point, argv):
    """SIGINT while Python loads the command line (its modules), or after the arguments are read and before the
    command's own handling begins, printed a KeyboardInterrupt traceback (exit -2)."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", *argv], cwd=tmp_path,
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": point},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert f"test pause at {point}" in line, line + proc.communicate(timeout=60)[1]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "chorus-batch: interrupted (Ctrl-C) while starting, before the command began; nothing was done"], err
    assert list(tmp_path.iterdir()) == []  # nothing written


# Ctrl-C the moment Python imports `module` on the way to the command line: the package itself (which `python -m`
# and the console script import before their entry code runs) and the first module the command line's entry loads.
_CTRL_C_AT_IMPORT = """
import os, runpy, signal, sys
module, sent = sys.argv[1], []
def hook(event, args):
    if event == "import" and args[0] == module and not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGINT)
sys.addaudithook(hook)
sys.argv = ["chorus-batch", "versions", "--db", "m.sqlite"]
runpy.run_module("chorus_batch", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["chorus_batch.errors", "tempfile"])
def test_ctrl_c_while_the_package_or_the_entry_loads_is_one_line_and_exit_130(tmp_path, module):
    """SIGINT at random times in a run's first half second printed a KeyboardInterrupt traceback (exit -2) when it
    landed in the package's own import (chorus_batch/__init__ loaded its errors module and typing before any entry
    code could catch it) or in the first import of cli.entry, which lay before its try."""
    out = subprocess.run([sys.executable, "-c", _CTRL_C_AT_IMPORT, module], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 130, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "chorus-batch: interrupted (Ctrl-C) while starting, before the command began; nothing was done"], out.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_readme_section_a_message_names_is_there():
    """A message that sends the user to the README names a section it has: a failed S3 access said
    "see README: cloud roots", which no section is called."""
    import ast

    headings = {line.lstrip("#").strip().replace("`", "") for line in (ROOT / "README.md").read_text(encoding="utf-8")
                .splitlines() if line.startswith("#")}
    named = []
    for source in (ROOT / "chorus_batch").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):  # the texts as Python joins them
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            named += [(source.name, name) for name in re.findall(r"README's (?:section )?\"([^\"]+)\"", text)]
            named += [(source.name, name) for name in re.findall(r"README: ([\w ]+)", text)]
    assert len(named) >= 4
    assert [(where, name) for where, name in named if name not in headings] == []


@pytest.mark.parametrize(("regex", "said"), [
    ("^(x", "invalid path pattern '^(x': unclosed group, at character 2"),
    (r"\d{8", r"invalid path pattern '\d{8': unclosed counted repetition, at character 3"),
])
def test_a_bad_path_pattern_is_said_on_one_line_with_its_reason_and_place(tmp_path, regex, said):
    """A [patterns] regex the Rust engine refuses was said as its four-line error folded into one with escapes:
    "invalid path pattern: regex error: regex parse error:\\n    (unclosed\\n    ^\\nerror: unclosed group". Now the
    pattern as written, the reason and the character where it goes wrong."""
    write(tmp_path / "site", "OMOP/a.csv")
    (tmp_path / "chorus.toml").write_text(f"[site]\nroot = \"site\"\n[patterns]\nWaveforms = ['{regex}']\n")
    out = cli("run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"chorus-batch: error: {said}\n" in out.stderr, out.stderr
    assert "\\n" not in out.stderr.splitlines()[0] and "regex parse error" not in out.stderr, out.stderr


@pytest.mark.parametrize(("toml", "said", "fix"), [
    ('[site]\nroot = "D:\\chorus\\site"\n', "in double quotes a backslash starts an escape",
     "write the value in single quotes, where a backslash is itself"),
    ('[site]\nname = "site-a\n', 'opens a quote (") that is not closed on its line',
     'end the value with the same quote ("): name = "site-a"'),
])
def test_a_slip_in_a_quoted_value_is_said_with_what_to_write(tmp_path, toml, said, fix):
    """A Windows path in double quotes (`root = "D:\\chorus\\site"`, as on the site's Windows machine) and a value whose
    closing quote is missing were tomllib's "Unescaped '\\' in a string" / "Illegal character '\\n'", with the fix
    "fix the TOML syntax at the position given": now what it means and what to write, with the line."""
    (tmp_path / "chorus.toml").write_text(toml)
    out = cli("versions", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert said in out.stderr and f"fix:   {fix}" in out.stderr and "where: chorus.toml, line 2" in out.stderr, out.stderr


def test_a_setting_written_as_a_dotted_key_is_named_on_its_own_line(tmp_path):
    """`workers.x = 2` under [run] (a dotted key: run.workers is a table) was refused as run.workers "on line 1", the
    [run] header's, not the line that writes it."""
    (tmp_path / "chorus.toml").write_text('[run]\nmode = "full"\nworkers.x = 2\n')
    out = cli("versions", cwd=tmp_path)
    assert out.returncode == 2 and "where: chorus.toml, line 3: [run] workers" in out.stderr, out.stderr
