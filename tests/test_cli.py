"""The command line: help, the demo, reading a manifest, configuration errors, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, cli, main_here, fill, paused, query, tree_md5, write


def _invocations(text: str) -> list[list[str]]:
    """The `chorus-batch ...` command lines of a shell text (examples in --help, the README's code): each pipeline,
    `&&`/`;` list member and redirection split off, comments dropped; the words after `chorus-batch`."""
    import shlex

    found = []
    for line in text.splitlines():
        line = re.sub(r"<[^<>]*>", "PLACEHOLDER", line.strip().removeprefix("$ "))  # az://<container>/, <version folder>
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words, skip = [], False
        for word in [*lexer, ";"]:
            if word in (">", ">>", "<", "2>"):
                skip = True  # the redirection's file
            elif skip:
                skip = False
            elif set(word) <= set("&|;()"):
                if words[:1] == ["chorus-batch"]:
                    found.append(words[1:])
                words = []
            else:
                words.append(word)
    return found


def _parses(words: list[str]) -> str | None:
    """None when the real parser takes `words`, else what it said."""
    import contextlib
    import io

    from chorus_batch.cli import _parser

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            _parser().parse_args(words)
    except SystemExit:
        return said.getvalue().strip().splitlines()[-1]
    return None


def test_an_option_given_twice_with_two_values_is_refused_naming_both():
    """`run --db /data/m.sqlite $EXTRA`, a --db in $EXTRA: argparse took the last, silently (another manifest)."""
    assert _parses(["run", "--db", "a.sqlite", "--site", "s", "--db=b b.sqlite"]) == (
        "chorus-batch run: error: --db is given twice, with two values (--db a.sqlite, then --db 'b b.sqlite'); it "
        "takes one: keep the one meant (nothing was done)")
    assert "--workers is given twice" in _parses(["status", "--workers", "2", "--workers", "3"])
    assert _parses(["run", "--site", "s", "--site", "s", "--exclude", "a", "--exclude", "b"]) is None  # the same; a list


def _said(words: list[str]) -> str:
    """What the command line's parsing (_parse: with its hints) said of `words`; '' when it took them."""
    import contextlib
    import io

    from chorus_batch.cli import _parse, _parser

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            _parse(_parser(), words)
    except SystemExit:
        return said.getvalue().strip().splitlines()[-1]
    return ""


def test_an_on_off_pair_given_both_ways_is_refused():
    """`run --no-validate $EXTRA` with --validate in $EXTRA: argparse took the last, silently."""
    assert _said(["status", "--site", "s", "--validate", "--no-validate"]) == (
        "chorus-batch status: error: --validate and --no-validate are both given; they say opposite things: keep the "
        "one meant (nothing was done)")
    assert "--no-follow-symlinks and --follow-symlinks are both given" in _said(
        ["run", "--no-follow-symlinks", "--site", "s", "--follow-symlinks"])
    assert _said(["run", "--site", "s", "--no-validate", "--no-validate", "--default-excludes"]) == ""  # the same twice


def test_an_on_off_flag_given_a_value_says_the_flag_that_means_it(tmp_path):
    """`--validate=false`, `--json=1`, as other tools take them: argparse said "argument --validate/--no-validate:
    ignored explicit argument 'false'" (what, not what to do), and `--json=1` printed no JSON error on stdout."""
    assert _said(["run", "--site", "s", "--validate=false"]) == (
        "chorus-batch run: error: --validate=false: --validate is a flag and takes no value; write --no-validate")
    assert _said(["run", "--site", "s", "--no-follow-symlinks=yes"]).endswith("; write --no-follow-symlinks")
    assert _said(["run", "--site", "s", "--default-excludes=maybe"]).endswith(
        "; write --default-excludes or --no-default-excludes")
    assert _said(["run", "--site", "s", "--dry-run=no"]).endswith("--dry-run is a flag and takes no value; leave "
                                                                   "--dry-run out")
    out = main_here("versions", "--db", str(tmp_path / "m.sqlite"), "--json=1")
    assert out.returncode == 2 and "--json is a flag and takes no value; write --json" in out.stderr, out.stderr
    assert json.loads(out.stdout)["exit_code"] == 2, out.stdout


def test_an_abbreviated_option_is_refused_naming_the_options_it_starts():
    """argparse took `--sit` for --site: a nightly line's shortened option would quietly change meaning (or stop
    working) once a new option shares its start."""
    assert _said(["status", "--sit", "s"]) == (
        "chorus-batch status: error: unrecognized argument --sit; options are not abbreviated: did you mean --site?")
    assert _said(["versions", "--d", "m.sqlite"]).endswith("did you mean --db or --demo?")
    assert _said(["versions", "--db=m.sqlite", "--js"]).endswith("did you mean --json?")
    assert _said(["run", "--dry", "--site", "s"]).endswith("did you mean --dry-run?")
    assert _said(["versions", "-vq", "--db=m.sqlite"]) == ""  # short flags still combine


def test_an_option_after_double_dash_is_said_as_such_not_as_a_misspelling_of_itself():
    """`history -- OMOP/x.csv --db m.sqlite` (a `--` put before a path that might start with '-'): --db after the
    `--` is no option, and the answer was "unrecognized argument --db; options are not abbreviated: did you mean
    --db?", naming the option given as the one probably meant."""
    said = _said(["history", "--", "OMOP/x.csv", "--db", "m.sqlite"])
    assert said == ("chorus-batch history: error: --db comes after --, which ends the options: every word after it is "
                    "taken as the PATH argument, never as an option; put --db before the --"), said
    assert "did you mean" not in _said(["versions", "--", "--db=m.sqlite"])
    assert "versions takes no argument after it; leave out the --" in _said(["versions", "--", "--db=m.sqlite"])
    assert _said(["history", "--db", "m.sqlite", "--", "-odd-name.csv"]) == ""  # what -- is for
    assert _said(["status", "--db", "m.sqlite", "--dbb", "x"]).endswith("did you mean --db?")  # a misspelling still is


def test_a_double_dash_that_ends_no_argument_is_taken_as_getopt_takes_it(tmp_path):
    """`chorus-batch -- versions --db m --json` (a wrapper passing "$@" after --) was "argument COMMAND: invalid
    choice: '--'" and, the --json coming after a --, no JSON error on stdout; `versions --db m --` (nothing after
    the --) was "unrecognized argument --" with no word of what to do. getopt's tools (ls, cp, git) take both."""
    db = tmp_path / "m.sqlite"
    for words in (["--", "versions", "--db", str(db), "--json"], ["versions", "--db", str(db), "--json", "--"],
                  ["-q", "--", "versions", "--db", str(db), "--json"]):
        out = cli(*words, cwd=tmp_path)
        # the command ran: its own word on the missing manifest, as JSON
        assert out.returncode == 2 and json.loads(out.stdout)["error"] == f"no manifest at {db}", (words, out.stdout,
                                                                                                    out.stderr)
    assert _said(["--", "ru", "--site", "s"]).endswith("unknown command 'ru'; did you mean 'run'? (commands: run, "
                                                      "status, testdata, versions, changes, validate, registry, upgrade, "
                                                      "files, diff, history, report, review, unlock, slurm-script, "
                                                      "upload, verify, mark-uploaded, import-journal, import-config)")
    assert _said(["history", "--db", "m.sqlite", "--", "--"]) == ""  # a path named '--' after the --: still taken
    assert "versions takes no argument after it" in _said(["versions", "--", "--db=m.sqlite"])  # as before


def test_an_option_of_other_commands_names_them():
    """`status --version 3` (status compares the site with the latest version) was "unrecognized argument --version"
    and nothing more; --site given to a command that reads the manifest only, the same."""
    said = _said(["status", "--db", "m.sqlite", "--version", "3"])
    assert said.startswith("chorus-batch status: error: unrecognized argument --version (--version is an option of run, "
                           "changes,"), said
    assert said.endswith("not of status: chorus-batch status --help shows its own)"), said
    assert "--site is an option of run, status," in _said(["versions", "--db", "m.sqlite", "--site", "s"])
    assert _said(["versions", "--bogus"]).endswith("unrecognized argument --bogus")  # an option of none: as before


def test_version_as_a_command_names_both_what_it_may_mean():
    """`chorus-batch version` (as `git version` asks a program's version) was answered "did you mean 'versions'?",
    the manifest's versions, with no word of --version."""
    said = _said(["version"])
    assert ("unknown command 'version'; did you mean 'versions' (the manifest's versions), or chorus-batch --version "
            "(this program's)?") in said, said
    assert "--version" not in _said(["versoins"]) and "did you mean 'versions'?" in _said(["versoins"])


def test_a_path_given_without_its_option_is_answered_with_the_command_line_that_names_it(tmp_path, monkeypatch):
    """`versions m.sqlite`, `run /data/site` were "unrecognized arguments: m.sqlite", with no word of --db or --site."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.sqlite").write_bytes(b"")
    (tmp_path / "site").mkdir()
    assert _said(["versions", "m.sqlite", "--json"]).endswith(
        "unrecognized arguments: m.sqlite; to give it as --db: chorus-batch versions --db m.sqlite --json")
    assert _said(["run", "-q", "site"]).endswith("to give it as --site: chorus-batch run -q --site site")
    assert _said(["changes", "20261205125813"]).endswith(
        "(changes takes no argument without an option before it: see chorus-batch changes --help)")


def test_upload_modalities_in_any_letter_case_as_files_takes_a_modality():
    """`upload --modalities waveforms` was "unknown modality 'waveforms'", while `files --modality waveforms` took it."""
    from chorus_batch.cli import _modalities
    from chorus_batch.errors import UsageError

    assert _modalities("waveforms, IMAGES,Waveforms") == ["Waveforms", "Images"]
    with pytest.raises(UsageError, match="unknown modality 'Wave'"):
        _modalities("Wave")


def test_counts_of_one_are_said_in_the_singular():
    """`mark-uploaded` said "recorded 1 uploads" (and "1 more logged blobs were", "1 lines of the log are"):
    counts are said through units.plural."""
    from chorus_batch.submit.script import Marked
    from chorus_batch.units import plural

    text = Marked(central="az://c", n_recorded=1, n_before=1, not_understood=1, example="x", n_superseded=1).text()
    for said in ("recorded 1 upload confirmed", "1 more logged blob was recorded before", "1 line of the log is not",
                 "recorded 1 file as superseded: a later version replaced, renamed or removed it before it was sent"):
        assert said in text, (said, text)
    assert "recorded 2 uploads confirmed" in Marked(central="az://c", n_recorded=2).text()
    assert plural(12000, "file", grouped=True) == "12,000 files" and plural(1, "file", grouped=True) == "1 file"


def test_a_tilde_no_shell_expanded_is_the_home_folder_in_every_path_argument(monkeypatch, tmp_path):
    """A systemd unit's ExecStart expands no '~': `--config ~/chorus.toml` was "config file not found: ~/chorus.toml",
    and --delete-list, --parquet, --staging, --merge, --from-log, JOURNAL and CONFIG were read under a folder '~'."""
    from chorus_batch.cli import _expand_home, _parser

    monkeypatch.setenv("HOME", str(tmp_path))
    for words in (["run", "--config", "~/c.toml", "--delete-list", "~/d.txt", "--parquet", "~/snaps", "--staging", "~/s",
                   "--merge", "~/m"], ["mark-uploaded", "--from-log", "~/up.log"], ["import-journal", "~/journal.db"],
                  ["import-config", "~/config.toml", "--out", "~/chorus.toml"]):
        args = _parser().parse_args(words)
        _expand_home(args)
        given = [value for value in vars(args).values() if isinstance(value, str) and "/" in value]
        assert given and all(value.startswith(f"{tmp_path}/") for value in given), (words, vars(args))


@pytest.mark.parametrize("option", ["--site", "--db", "--parquet"])
def test_a_tilde_of_no_user_names_the_flag_not_the_library_argument(tmp_path, option):
    """`status --site '~nosuch/x'` (a cron line's quoted path of another account's home) said "RunSettings(site=...)
    ~nosuch/x: '~' names no folder here", where: RunSettings(site=...): the library's words, not the flag given. A
    library caller is still told RunSettings(site=...)."""
    from chorus_batch.config import RunSettings
    from chorus_batch.errors import UsageError

    write(tmp_path / "site", "OMOP/a.csv")
    given = {"--site": [], "--db": ["--site", str(tmp_path / "site")],
             "--parquet": ["--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite")]}[option]
    out = cli("run", *given, option, "~nosuchuser_chorus/x", cwd=tmp_path)
    assert out.returncode == 2 and "RunSettings" not in out.stderr, out.stderr
    assert f"{option} ~nosuchuser_chorus/x: '~' names no folder here" in out.stderr, out.stderr
    assert f"where: {option}\n" in out.stderr, out.stderr
    with pytest.raises(UsageError, match=r"RunSettings\(site=\.\.\.\) ~nosuchuser_chorus/x"):
        RunSettings(site="~nosuchuser_chorus/x")


def test_every_command_has_help_with_an_example():
    """Every command's --help has examples that use it, and each example's command lines parse with the real
    parser: command names and flags are the real ones (not only "example" somewhere in the text)."""
    from chorus_batch.cli import _parser

    parser = _parser()
    examples = {"chorus-batch": parser.epilog} | {name: command.epilog for name, command in parser.commands.items()}
    for name, epilog in examples.items():
        shown = epilog.split("\n\n", 1)[0]
        assert shown.startswith(("example:\n", "examples:\n")), name
        invocations = _invocations(shown.split("\n", 1)[1])
        assert name == "chorus-batch" or any(words[:1] == [name] for words in invocations), (name, invocations)
        for words in invocations:
            assert _parses(words) is None, (name, words, _parses(words))


def test_the_readmes_command_lines_parse():
    """Every `chorus-batch ...` line of the README's code (indented blocks and fenced ones) names a real command
    with real flags, as the real parser reads it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    fenced = [text for language, text in re.findall(r"^```(\w*)\n(.*?)^```$", readme, re.S | re.M)
              if language in ("", "sh", "bash")]
    indented = [line for line in readme.splitlines() if line.startswith("    ") and "chorus-batch" in line]
    invocations = [words for text in [*fenced, *indented] for words in _invocations(text)]
    assert len(invocations) > 20
    wrong = [(words, said) for words in invocations if (said := _parses(words)) is not None]
    assert not wrong


def test_the_readmes_command_table_names_every_option_of_every_command():
    """The README's table of commands is where a site engineer looks first: `verify --workers`, `validate
    --workers`, `review --compare-to`, `run --cloud-md5`/`--shard`/`--merge` and a dozen more were in --help only.
    Every command has a row naming each of its options (`--config`, `--demo`, `-v`, `-q`: said once below it)."""
    from chorus_batch.cli import _parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `chorus-batch ([a-z-]+)(.*?)` \|", readme, re.M))
    common = ("--help", "--verbose", "--quiet", "--config", "--demo")
    assert "also takes `--config FILE`" in readme and "`--demo` makes" in readme
    unnamed = {}
    for name, command in _parser().commands.items():
        assert name in rows, f"no row for {name}"
        said = rows[name].replace("--[no-]", "--")
        options = [[o.replace("--no-", "--") for o in action.option_strings if o.startswith("--")]
                   for action in command._actions]
        missing = [o[0] for o in options if o and o[0] not in common and not any(x in said for x in o)]
        if missing:
            unnamed[name] = missing
    assert not unnamed


def test_every_command_help_explains_each_option_and_lists_the_exit_codes():
    """Each command's --help has an example, says what every option is, and lists the exit codes: `testdata`'s
    --persons, `versions --json` and `diff --from` had no word, and ten commands' help had no exit codes; `versions
    --help` and `changes --help` went from the usage straight to the options, with no word of what they do."""
    from chorus_batch.cli import _parser
    from chorus_batch.errors import EXIT_CODES_HELP

    for name, command in _parser().commands.items():
        # what the command does, between the usage and the options
        said = command.format_help().split("\n\n")[1]
        assert not said.startswith(("options:", "positional arguments:")) and len(said.split()) >= 4, (name, said)
        assert "example" in (command.epilog or ""), name
        assert EXIT_CODES_HELP in (command.epilog or ""), name
        unexplained = [action.option_strings or action.dest for action in command._actions if not action.help]
        assert not unexplained, (name, unexplained)
        # an option that has a value when not given says which (testdata's --size and --change-fraction did not)
        unsaid = [action.option_strings for action in command._actions
                  if action.default not in (None, False, True, argparse.SUPPRESS) and "default" not in action.help]
        assert not unsaid, (name, unsaid)


def test_help_documents_the_exit_codes():
    out = main_here("run", "--help").stdout
    for code in ("0 ", "1 ", "2 ", "3 ", "4 "):
        assert f"\n  {code}" in out


def test_console_script_and_module_run_the_same_cli():
    script = Path(sys.executable).with_name("chorus-batch")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: chorus-batch" in out.stdout


def test_demo_runs_with_run_demo(tmp_path):
    out = cli("run", "--demo", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "demo site" in out.stdout and "--site" in out.stdout
    db = tmp_path / "chorus_demo_manifest.sqlite"
    assert str(db) in out.stdout
    assert query(db, "SELECT count(*) FROM source_files")[0][0] > 30
    again = cli("run", "--demo", cwd=tmp_path)
    assert again.returncode == 0 and "no changes" in again.stdout


def test_wheel_ships_the_demo_site(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True)
    if out.returncode != 0:  # no hatchling in this environment: build in isolation
        out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    demo = [n for n in names if n.startswith("chorus_batch/demo_site/")]
    assert len(demo) == len(tree_md5(ROOT / "data" / "demo_site"))
    # `chorus-batch review` after `pip install ".[notebook]"` said "the review notebook is not at
    # .../site-packages/notebooks/review.ipynb": the wheel ships it, and the installed package finds it
    assert zipfile.ZipFile(wheel).read("chorus_batch/notebooks/review.ipynb") == (ROOT / "notebooks" / "review.ipynb").read_bytes()
    target = tmp_path / "installed"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    found = subprocess.run([sys.executable, "-c", "from chorus_batch.report.notebook import NOTEBOOK; print(NOTEBOOK)"],
                           capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == (target / "chorus_batch" / "notebooks" / "review.ipynb").resolve()


def test_versions_and_changes_as_json_and_csv(site, db):
    write(site, "OMOP/a.csv", b"a")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    write(site, "OMOP/a.csv", b"b")
    write(site, "OMOP/c.csv", b"c")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    versions = json.loads(cli("versions", "--db", str(db), "--json").stdout)
    assert [(v["n_added"], v["n_replaced"]) for v in versions] == [(1, 0), (1, 1)]
    changes = json.loads(cli("changes", "--db", str(db), "--json").stdout)
    assert sorted((c["change"], c["srcfile"]) for c in changes) == [("added", "OMOP/c.csv"), ("replaced", "OMOP/a.csv")]
    first = json.loads(cli("changes", "--db", str(db), "--version", versions[0]["label"], "--json").stdout)
    assert [c["change"] for c in first] == ["added"]
    csv = cli("changes", "--db", str(db), "--csv").stdout.splitlines()
    assert csv[0].startswith("version,change,srcfile")
    assert len(csv) == 3
    text = cli("versions", "--db", str(db)).stdout
    assert versions[1]["label"] in text


def test_json_says_nanosecond_times_exactly_to_a_reader_of_doubles(site, db):
    """files/history --json wrote mtime_ns (about 1.8e18) as a number: JavaScript and jq (doubles) read it rounded.
    Integers past 2**53 are decimal strings; every other number stays exact as a double."""
    write(site, "OMOP/a.csv", b"a")
    os.utime(site / "OMOP/a.csv", ns=(1796475491578598167, 1796475491578598167))
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    for argv in (["files", "--json"], ["history", "OMOP/a.csv", "--json"]):
        [row] = json.loads(cli(*argv, "--db", str(db)).stdout, parse_int=float)  # (as a reader of doubles takes it)
        assert row["mtime_ns"] == "1796475491578598167" and int(row["verified_ns"]) > 2**53, row
        assert all(not isinstance(v, float) or v <= 2**53 for v in row.values()), row


def test_a_manifest_on_a_full_disk_is_still_read_and_a_run_says_the_disk_is_full(site, db, small_disk):
    """`versions`, `files` and `report` failed ("the disk is full: disk I/O error") on a manifest they only read: SQLite
    could not make its -shm file. Read-only they read it; a run on it says the disk, not "readonly database"."""
    write(site, "OMOP/a.csv", b"a")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    shutil.copy(db, small_disk / "m.sqlite")
    fill(small_disk)
    manifest = str(small_disk / "m.sqlite")
    versions = cli("versions", "--db", manifest, "--json")
    assert versions.returncode == 0 and len(json.loads(versions.stdout)) == 1, versions.stderr
    files = cli("files", "--db", manifest, "--csv")
    assert files.returncode == 0 and "OMOP/a.csv" in files.stdout, files.stderr
    write(site, "OMOP/b.csv", b"b")
    run = cli("run", "--no-validate", "--site", str(site), "--db", manifest)
    assert run.returncode == 3 and "the disk is full" in run.stderr and "nothing was committed" in run.stderr, run.stderr


def test_a_name_in_another_unicode_form_is_said_and_starts_no_new_manifest(site, db, tmp_path):
    """`--db m_café.sqlite` typed or pasted in decomposed form (as macOS writes it) beside the composed m_café.sqlite:
    a run started a new manifest, the whole site recorded as added; `--site café` so was "a typo, or a disk that is
    not mounted?". Both now name the twin on disk; nothing is written."""
    write(site, "OMOP/a.csv", b"a")
    composed, decomposed = tmp_path / "m_caf\u00e9.sqlite", str(tmp_path / "m_cafe\u0301.sqlite")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(composed), "-q").returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    out = main_here("run", "--no-validate", "--site", str(site), "--db", decomposed)
    assert out.returncode == 2 and "but there is m_caf\u00e9.sqlite, a name that differs from it only in Unicode form" \
        in out.stderr and "no new manifest was started" in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    (tmp_path / "caf\u00e9").mkdir()
    out = main_here("status", "--site", str(tmp_path / "cafe\u0301"), "--db", str(db))
    assert out.returncode == 2 and "cafe\\u0301' does not exist, but caf\u00e9 is there beside it" in out.stderr, out.stderr


def test_unknown_version_and_missing_manifest_are_clear_errors(site, db, tmp_path):
    out = main_here("changes", "--db", str(tmp_path / "none.sqlite"))
    assert out.returncode == 2 and "no manifest at" in out.stderr and "fix:" in out.stderr
    write(site, "OMOP/a.csv")
    main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q")
    out = main_here("changes", "--db", str(db), "--version", "19990101000000")
    assert out.returncode == 2 and "no version '19990101000000'" in out.stderr


def test_chorus_toml_in_the_working_directory_is_used(tmp_path):
    site = tmp_path / "data"
    write(site, "OMOP/a.csv")
    (tmp_path / "chorus.toml").write_text('[site]\nroot = "data"\nname = "site-x"\n[manifest]\ndb = "out/m.sqlite"\n'
                                          '[run]\nvalidate = false\n')
    (tmp_path / "out").mkdir()  # (a new manifest starts only in a folder that exists)
    out = cli("run", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert query(tmp_path / "out" / "m.sqlite", "SELECT site FROM versions") == [("site-x",)]
    assert cli("versions", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[site\nroot=1", "not valid TOML"),
        ('[run]\nmode = "sometimes"\n', "invalid setting 'run.mode'"),
        ('[site]\nroot = "x"\ncolour = "blue"\n', "unknown setting 'site.colour'"),
        ('[patterns]\nWaveforms = ["(?P<bad"]\n', "invalid path pattern"),
        # an empty path was the config file's own folder (parquet: snapshots written beside chorus.toml)
        ('[manifest]\nparquet = ""\n', "setting 'manifest.parquet' is empty"),
        ('[manifest]\ndb = ""\n', "setting 'manifest.db' is empty"),
        ('[site]\nroot = " "\n', "setting 'site.root' is empty"),
        ('[site.roots]\nImages = ""\n', "setting 'site.roots.Images' is empty"),
        # `name = ""` was taken as no name while `root = ""` was refused: every text setting written empty is refused
        ('[site]\nroot = "x"\nname = ""\n', "setting 'site.name' is empty"),
        # recorded with each version and printed: an escape rewrote the terminal, a line break split the cron log
        ('[site]\nroot = "x"\nname = "site-a\\u001b[2J\\nX"\n', "invalid setting 'site.name': 'site-a\\x1b[2J\\nX' holds a "
         "control character"),
        # an array of tables: "should be a table of settings ([section]), not [{"workers": 2}]", the brackets unsaid
        ('[[run]]\nworkers = 2\n', "invalid setting 'run': is a list of tables (written [[run]], with double brackets"
                                   ": an array of tables), not one table; write [run], with single brackets"),
        ('[site]\nroot = "x"\n[[registry]]\n[[registry]]\n', "write [registry], with single brackets, once (it is "
                                                              "written 2 times: merge their settings)"),
        ('[s3]\nregion = " "\n', "setting 's3.region' is empty"),
        # a region botocore refuses was taken, and every command on an s3:// root failed, exit 3, "cannot reach"
        ('[s3]\nregion = "us east 1"\n', "invalid setting 's3.region': 'us east 1' is not a region name"),
        ('[s3]\nregion = "us-east-1 "\n', "invalid setting 's3.region': 'us-east-1 ' is not a region name"),
        ('[run]\nexclude = ["*.tmp", ""]\n', "setting 'run.exclude' lists an empty text"),
        ('[patterns]\nWaveforms = [""]\n', "setting 'patterns.Waveforms' lists an empty text"),
        # taken: every waveform file of the site (recorded ones too) then fit no pattern, unparsed and classified Other
        ('[patterns]\nWaveforms = []\n', "[patterns] Waveforms lists no pattern: every Waveforms file of the site "
                                         "would fit none"),
        # a negative count was taken, and refused every later run; a union named its member ('run.max_delete.str')
        ("[run]\nmax_delete = -5\n", "invalid setting 'run.max_delete': -5 is not"),
        # a share written as a number (0.5, 50.0) said only "should be text or a whole number"
        ("[run]\nmax_delete = 0.5\n", 'nor a percentage, which is written as text with % (max_delete = "50%"'),
        # "Input should be a valid integer" said neither what was written nor what it should be; a list's entry was
        # 'run.exclude.0'
        ("[run]\nworkers = 8.0\n", "invalid setting 'run.workers': should be a whole number, not 8.0"),
        # a number in quotes (a percentage as max_delete's "50%" is written) said what it should be, not what to write
        ('[run]\nverify_sample = "5%"\n', "invalid setting 'run.verify_sample': should be a number, not \"5%\"; write "
                                          "verify_sample = 5, without quotes or %\n"),
        ('[central]\nworkers = "8"\n', "should be a whole number, not \"8\"; write workers = 8, without quotes\n"),
        ("[run]\nworkers = 0\n", "invalid setting 'run.workers': should be greater than or equal to 1, not 0"),
        ('[run]\nexclude = ["a", 1]\n', "invalid setting 'run.exclude': its entry 2 should be text in quotes, not 1"),
        ("[run]\nmax_delete = true\n", "invalid setting 'run.max_delete': should be text or a whole number, not true"),
        # a TOML date or time written bare was shown in quotes, as the text it should have been: 'should be text in
        # quotes, not "2024-01-01"'
        ('[site]\nroot = "x"\nname = 2024-01-01\n', "invalid setting 'site.name': should be text in quotes, not 2024-01-01\n"),
        ('[run]\nexclude = ["a", 07:32:00]\n', "its entry 2 should be text in quotes, not 07:32:00\n"),
        # a space at either end, or an https:// URL, was told "secrets go in the environment, not the URL"
        ('[central]\nto = " az://mgh/"\n', "invalid setting 'central.to': ' az://mgh/' starts with white space: write "
                                         "it without ('az://mgh/')"),
        ('[central]\nto = "https://acct.blob.core.windows.net/mgh"\n', "invalid setting 'central.to': "
         "'https://acct.blob.core.windows.net/mgh' is not an Azure container URL: give it as az://<container>/"),
        ('[central]\nto = "az://mgh/?sv=1&sig=x"\n', "(secrets go in the environment, not the URL)"),
        # TOML's nan was "should be less than or equal to 3600, not NaN", and JSON's spelling of inf (Infinity)
        ("[run]\nracy_window_s = nan\n", "invalid setting 'run.racy_window_s': should be a number, not nan"),
        ("[run]\nverify_sample = inf\n", "invalid setting 'run.verify_sample': should be less than or equal to 100, not inf"),
        # a float max_delete out of 0-100 was told to write "nan%" or "150%", no share either
        ("[run]\nmax_delete = nan\n", "invalid setting 'run.max_delete': nan is not a percentage"),
        ("[run]\nmax_delete = 150.0\n", "invalid setting 'run.max_delete': 150.0 is not a percentage"),
        # an infinite byte count was an OverflowError ("internal error"), a negative one a limit taken
        ("[run]\nverify_max_bytes = '1e400G'\n", "invalid setting 'run.verify_max_bytes': '1e400G' is not a byte count"),
        ("[run]\nverify_max_bytes = '-5G'\n", "invalid setting 'run.verify_max_bytes': '-5G' is not a byte count"),
        # the dotted name every message gives a setting, written under its [section]: "unknown setting 'run.run'",
        # fix "remove it"
        ("[run]\nrun.workers = 8\n", "unknown setting 'run.run.workers': run.workers = ... under [run] is read as "
                                     "run.run.workers"),
        ('[run]\nsite.name = "a"\n', "fix:   write it under [site] as name = ..., or as site.name = ... above"),
        # past a 64-bit integer: `registry` failed with "internal error: OverflowError"
        ("[registry]\nimage_proc_ids = [1, 99999999999999999999999]\n",
         "invalid setting 'registry.image_proc_ids': give [first, last] with 0 < first <= last <= 9223372036854775807"),
    ],
)
def test_bad_config_exits_2_with_the_setting_and_a_fix(tmp_path, toml, message):
    (tmp_path / "site").mkdir()
    config = tmp_path / "c.toml"
    config.write_text(toml)
    out = main_here("run", "--config", str(config), "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "fix:" in out.stderr and "Traceback" not in out.stderr
    assert f"where: {config}" in out.stderr, out.stderr  # the file, then the setting
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "site"]  # nothing written


_HEAD = '# chorus.toml of site A\n\n[site]\nroot = "x"   # the tree\nname = "a"\n\n[run]\n# nightly\nmode = "full"\n'


@pytest.mark.parametrize("body, line, where", [
    ('workers = "8"\n', 10, "[run] workers"),  # invalid
    ("workrs = 8\n", 10, "[run] workrs"),  # unknown, misspelt
    ('exclude = [\n  "*.tmp",\n  3,\n]\n', 10, "[run] exclude"),  # an entry of a list over lines: its setting's line
    ('note = """\nworkers = 1\n"""\n[manifest]\nworkers = 2\n', 14, "[manifest] workers"),  # not within a text
    ("[azure]\naccount_key = 'x'\n", 11, "[azure] account_key"),  # a secret, its value not shown
    ("[central]\nto = ''\n", 11, "[central] to"),  # empty
    ("[colour]\nx = 1\n", 10, "[colour]"),  # an unknown section: its header
])
@pytest.mark.parametrize("encoding, newline", [("utf-8", "\n"), ("utf-8-sig", "\r\n"), ("utf-16", "\n")])
def test_a_config_error_names_the_line_of_its_setting(tmp_path, body, line, where, encoding, newline):
    """A setting's error named the file and the setting ("where: chorus.toml [run] workers") but not its line, which a
    syntax error names: in a long file, a setting given in an inline table or a [section] split in two, the line is
    what an editor goes to. Lines count as an editor counts them, also in a file saved by Notepad (a byte-order mark,
    CRLF) or as UTF-16."""
    config = tmp_path / "c.toml"
    config.write_bytes((_HEAD + body).replace("\n", newline).encode(encoding))
    out = main_here("run", "--config", str(config), "--db", str(tmp_path / "m.sqlite"))
    assert out.returncode == 2, out.stderr
    assert f"  where: {config}, line {line}: {where}\n" in out.stderr, out.stderr
    assert (_HEAD + body).splitlines()[line - 1].lstrip("[").startswith(where.split()[-1].strip("[]")), body


@pytest.mark.parametrize("make, message", [
    (lambda toml: toml.mkdir(), "config file chorus.toml is a folder, not a file"),
    (lambda toml: toml.symlink_to("/nonexistent-share/chorus.toml"),
     "config file chorus.toml is a symbolic link to /nonexistent-share/chorus.toml, which is not there"),
])
def test_a_chorus_toml_here_that_is_no_file_is_refused_not_skipped(tmp_path, make, message):
    """A ./chorus.toml that was a folder or a link to an unmounted share was passed over: the nightly run went on
    with --site alone, the default manifest (a new one, here) and the default max_delete; exit 0."""
    write(tmp_path / "site", "OMOP/a.csv")
    make(tmp_path / "chorus.toml")
    out = cli("run", "--site", str(tmp_path / "site"), "--no-validate", "-q", cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "fix:" in out.stderr, (out.returncode, out.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chorus.toml", "site"]  # no manifest started


def test_central_to_in_chorus_toml_takes_the_spellings_to_takes(tmp_path):
    """[central] to = "AZ://mgh/" was refused ("secrets go in the environment, not the URL") where --to AZ://mgh/ is
    taken, as a root's AZ:// spelling is: the protocol is read case-blind in both."""
    from chorus_batch.config import load_config

    config = tmp_path / "c.toml"
    for to in ("AZ://mgh/", "Abfs://mgh@acct.dfs.core.windows.net/site/"):
        config.write_text(f'[central]\nto = "{to}"\n')
        assert load_config(str(config)).central.to == to


def test_a_config_that_cannot_be_read_says_why_and_what_mends_it(tmp_path):
    """A config path that is a loop of symbolic links, lies under a file or is too long was told "cannot read config
    file: [Errno 40] Too many levels of symbolic links: 'c.toml'" and to "check the file's permissions", which mends
    none of them (import-config alike). Each is said in words, with its own fix; exit 2, nothing made."""
    write(tmp_path / "site", "OMOP/a.csv")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "afile").write_text("x")
    cases = [(str(tmp_path / "a"), "is a loop of symbolic links", f"correct the link (`ls -l {tmp_path / 'a'}`"),
             (str(tmp_path / "afile" / "chorus.toml"), "a part of its path is a file, not a folder",
              "the path of the file itself"),
             (str(tmp_path / ("x" * 300)), "longer than this system allows", "as it is on disk")]
    for config, said, fix in cases:
        for args in (("run", "--config", config, "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite")),
                     ("import-config", config)):
            out = cli(*args, cwd=tmp_path)
            assert out.returncode == 2 and said in out.stderr and fix in out.stderr, (args, out.stderr)
            assert "check the file's permissions" not in out.stderr and "Errno" not in out.stderr, out.stderr
    # ./chorus.toml that is such a loop, read without --config: said alike
    (tmp_path / "chorus.toml").symlink_to(tmp_path / "a")
    out = cli("run", "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"), cwd=tmp_path)
    assert out.returncode == 2 and "is a loop of symbolic links" in out.stderr, out.stderr
    assert not (tmp_path / "m.sqlite").exists()


@pytest.mark.parametrize("toml, message, fix", [
    ("[run]\nworkers = 2\nworkers = 3\n", "the setting 'run.workers' is given twice, on line 2 and on line 3\n  "
                                          "where: {toml}, line 3", "keep one of the two"),
    # tomllib said neither the setting nor its line: "Cannot overwrite a value (at end of document)" of a file whose
    # last line was the second one, and "(at line 9, column 9)" of a value over several lines, whose first is the one
    ("[site]\nroot = '/s'\n\n[run]\nworkers = 2\nmode = 'full'\nworkers = 3",
     "the setting 'run.workers' is given twice, on line 5 and on line 7", "keep one of the two"),
    ("[run]\nexclude = [\n  'a',\n  'b',\n]\n# more\nexclude = ['c']\n",
     "the setting 'run.exclude' is given twice, on line 2 and on line 7", "keep one of the two"),
    # a section declared twice was "Cannot declare ('run',) twice", without the first one's line, and told to "keep
    # one of the two and remove the other", which loses the settings of the other
    ("[site]\nroots.OMOP = '/a'\n[run]\nworkers = 2\n[site.roots]\nOMOP = '/b'\n",
     "the section [site.roots] is declared twice, on line 2 and on line 5", "merge them"),
    ("[site.roots]\nOMOP = '/a'\n\n[run]\nworkers = 2\n\n[ site . roots ]\nWaveforms = '/w'\n",
     "the section [site.roots] is declared twice, on line 1 and on line 7\n  where: {toml}, line 7",
     "move the settings below the second [site.roots] up to the first (line 1), and remove the second header line"),
    ("[run]\nworkers = 2\n[run]\nmode = 'full'\n", "the section [run] is declared twice, on line 1 and on line 3",
     "merge them"),
])
def test_a_setting_or_section_given_twice_says_so(tmp_path, toml, message, fix):
    (tmp_path / "c.toml").write_text(toml)
    out = main_here("run", "--config", str(tmp_path / "c.toml"), "--site", str(tmp_path), "--db", str(tmp_path / "m.sqlite"))
    message = message.format(toml=tmp_path / "c.toml")
    assert out.returncode == 2 and message in out.stderr and fix in out.stderr, out.stderr


@pytest.mark.parametrize("toml, message, fix", [
    # "Unterminated string (at end of document)", with the file as its only where, and "fix the TOML syntax"
    ('[site]\nroot = "/s"\n[manifest]\ndb = "m.sqlite', 'the value on line 4 opens a quote (") that is not closed',
     'end the value with the same quote ("): db = "m.sqlite"'),
    ("[site]\nroot = '/s\n[run]\nworkers = 2\n", "the value on line 2 opens a quote (') that is not closed",
     "end the value with the same quote ('): root = '/s'"),
    ('[site]\nroot = """/s\n[run]\n', 'the value on line 2 opens a quote (""") that is not closed',
     'root = """/s"""'),
    # "Illegal character '\\n' (at line 2, column 11)": its line, the quote not said
    ('[site]\nroot = "/s\n[run]\nworkers = 2\n', 'the value on line 2 opens a quote (") that is not closed on its line',
     'end the value with the same quote ("): root = "/s"'),
    ("[site]\nroot = '/s\n[site.roots]\nOMOP = '/o'\n", "the value on line 2 opens a quote (') that is not closed",
     "root = '/s'"),
])
def test_a_value_whose_quote_is_not_closed_is_said_with_its_line(tmp_path, toml, message, fix):
    (tmp_path / "c.toml").write_text(toml)
    out = main_here("versions", "--config", str(tmp_path / "c.toml"))
    line = re.search(r"on line (\d)", message).group(1)
    assert out.returncode == 2 and message in out.stderr and f"where: {tmp_path / 'c.toml'}, line {line}" in out.stderr
    assert f"fix:   {fix}" in out.stderr or fix in out.stderr, out.stderr
    assert "fix the TOML syntax" not in out.stderr, out.stderr


@pytest.mark.parametrize("toml, line, message, fix", [
    # "Unclosed array (at line 3, column 1)": the next setting's line, as if that setting were wrong
    ('[run]\nexclude = ["a", "b"\nworkers = 2\n', 2, "the list that opens on line 2 (exclude = ...) is not closed",
     "a ',' between each two items and a ']' after the last"),
    # "... (at end of document)": no line at all, and "fix the TOML syntax at the position given", which none was
    ('[run]\nworkers = 2\nexclude = ["a",\n  "b"\n', 3, "the list that opens on line 3 (exclude = ...) is not "
     "closed", "and a ']' after the last"),
    ('[run]\nexclude = [\n  "a"\n  "b",\n]\n', 2, "the list that opens on line 2", "a ',' between each two items"),
    ("[azure]\naccount_name = 'a'\nx = {a = 1\n[site]\n", 3, "the inline table that opens on line 3 (x = ...)",
     "on the same line"),
    ('[run]\nexclude = ["a",\n', 2, "the list that opens on line 2 (exclude = ...) is not closed", "a ']' after"),
    ("[site]\nroot = '/s'\n[run]\nworkers = ", 4, "the file ends before what line 4 begins (workers = ...) is "
     "complete", "complete it"),
])
def test_a_list_not_closed_or_a_file_ending_within_a_setting_is_said_with_its_line(tmp_path, toml, line, message, fix):
    (tmp_path / "c.toml").write_text(toml)
    out = main_here("versions", "--config", str(tmp_path / "c.toml"))
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert f"where: {tmp_path / 'c.toml'}, line {line}\n" in out.stderr and fix in out.stderr, out.stderr
    assert "fix the TOML syntax" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_setting_given_twice_in_a_piped_config_is_named_from_the_one_read(tmp_path):
    """The setting given twice is found in the text read, never by reading the file again: a pipe
    (`--config <(envsubst < chorus.toml.in)`) has given its text once."""
    out = subprocess.run(
        f"{sys.executable} -m chorus_batch status -q --config <(printf '[run]\\nworkers = 2\\n\\nworkers = 3\\n')",
        shell=True, executable="/bin/bash", cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "the setting 'run.workers' is given twice, on line 2 and on line 4" in out.stderr, out.stderr
    assert "named pipe" not in out.stderr, out.stderr


def test_a_config_read_from_a_pipe_takes_its_relative_paths_from_the_current_folder(tmp_path):
    """`--config <(envsubst < chorus.toml.in)`: relative paths were taken from /proc/<pid>/fd, "site root is not a
    readable directory: /proc/11836/fd/site"."""
    write(tmp_path / "site", "OMOP/a.csv")
    out = subprocess.run(
        f"{sys.executable} -m chorus_batch run -q --config <(printf '[site]\\nroot = \"site\"\\n[manifest]\\n"
        "db = \"m.sqlite\"\\n[run]\\nvalidate = false\\n')", shell=True, executable="/bin/bash", cwd=tmp_path,
        capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert query(tmp_path / "m.sqlite", "SELECT n_files FROM versions") == [(1,)]
    # `--config /dev/stdin < chorus.toml` alike: they were from /dev ("/dev/site does not exist")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.toml").write_text('[site]\nroot = "site"\n[manifest]\ndb = "m.sqlite"\n')
    with (tmp_path / "elsewhere" / "c.toml").open() as stdin:
        out = subprocess.run([sys.executable, "-m", "chorus_batch", "status", "-q", "--config", "/dev/stdin"],
                             stdin=stdin, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode in (0, 1) and f"commit to {tmp_path / 'm.sqlite'}" in out.stdout, out.stdout + out.stderr


def test_a_config_reached_through_a_link_takes_its_relative_paths_from_the_links_folder(tmp_path):
    """./chorus.toml -> /etc/chorus/site-a.toml took `db = "m.sqlite"` from /etc/chorus (a new manifest there), and a
    config under a linked release folder (current -> releases/v3) from the release: a new manifest each deploy."""
    from chorus_batch.config import load_config

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "site-a.toml").write_text('[site]\nroot = "site"\n[manifest]\ndb = "m.sqlite"\n')
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "chorus.toml").symlink_to("../etc/site-a.toml")
    config = load_config(tmp_path / "work" / "chorus.toml")
    assert (config.site.root, config.manifest.db) == (str(tmp_path / "work" / "site"), str(tmp_path / "work" / "m.sqlite"))
    (tmp_path / "current").symlink_to("etc")
    assert load_config(tmp_path / "current" / "site-a.toml").manifest.db == str(tmp_path / "current" / "m.sqlite")


def test_a_config_that_is_a_pipe_nothing_writes_to_or_a_device_is_refused_not_waited_on(tmp_path):
    """--config on a named pipe with no writer (a mkfifo left behind) waited forever: a nightly run that never ended;
    /dev/zero was read without end. A pipe whose writer comes is read."""
    import threading

    from chorus_batch.config import load_config
    from chorus_batch.errors import ConfigError

    fifo = tmp_path / "chorus.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is a named pipe that nothing writes to"):
        load_config(fifo)
    with pytest.raises(ConfigError, match="config file /dev/zero is a device, not a file"):
        load_config("/dev/zero")
    writer = threading.Thread(target=lambda: fifo.write_text("[run]\nworkers = 3\n"))
    writer.start()
    assert load_config(fifo).run.workers == 3
    writer.join()
    assert load_config(os.devnull).run.mode == "full"  # (the way to read no ./chorus.toml: every default)
    from chorus_batch.upstream.config import convert_config

    with pytest.raises(ConfigError, match="nothing writes to"):  # import-config CONFIG alike
        convert_config(fifo)
    from chorus_batch.commit import read_delete_list

    with pytest.raises(ConfigError, match="delete list .* is a named pipe that nothing writes to"):  # --delete-list too
        read_delete_list(str(fifo))
    with pytest.raises(ConfigError, match="delete list /dev/zero is a device"):
        read_delete_list("/dev/zero")


def test_a_config_that_is_a_pipe_is_read_where_the_os_has_no_o_nonblock(tmp_path, monkeypatch):
    """Windows' os.stat says S_IFIFO of a named pipe (\\\\.\\pipe\\NAME), and its os has no O_NONBLOCK (Unix only):
    `--config \\\\.\\pipe\\chorus` ended in AttributeError ("module 'os' has no attribute 'O_NONBLOCK'"), a
    traceback. Without it the pipe is read to its end as a file is (simulated here: O_NONBLOCK taken away)."""
    import threading

    from chorus_batch.config import load_config

    nonblock = os.O_NONBLOCK
    monkeypatch.delattr(os, "O_NONBLOCK")
    fifo = tmp_path / "chorus.toml"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("[run]\nworkers = 3\n"), daemon=True)
    writer.start()
    try:
        assert load_config(fifo).run.workers == 3
    finally:  # (a failed read left the writer waiting for a reader: one is held open until it ends)
        reader = os.open(fifo, os.O_RDONLY | nonblock)
        writer.join()
        os.close(reader)


def test_a_delete_list_given_as_dash_is_told_of_dev_stdin(tmp_path, monkeypatch):
    """`--delete-list -`, as other tools read standard input, was "the delete list - does not exist" with nothing
    more: said as --config's is, with the name that reads standard input."""
    from chorus_batch.commit import read_delete_list
    from chorus_batch.errors import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as raised:
        read_delete_list("-")
    assert raised.value.exit_code == 2 and "(standard input is --delete-list /dev/stdin)" in str(raised.value.fix)


@pytest.mark.parametrize(("setting", "value", "variable"), [
    ("[site]\nroot", "$DATA/site", "$DATA"), ("[site]\nroot", "${DATA}", "${DATA}"),
    ("[site]\nroot", "%DATA%\\\\site", "%DATA%"), ("[site.roots]\nImages", "~/$IMAGES/x", "$IMAGES"),
    ("[manifest]\ndb", "$OUT/m.sqlite", "$OUT"), ("[manifest]\nparquet", "snaps/${WHEN}", "${WHEN}"),
])
def test_an_environment_variable_in_a_config_path_is_refused(tmp_path, setting, value, variable):
    """chorus.toml expands no environment variables: `root = "$DATA/site"` was "site root is not a readable directory:
    <config folder>/$DATA/site", and `db = "$OUT/m.sqlite"` a manifest made in a new folder named `$OUT`."""
    write(tmp_path / "site", "OMOP/a.csv")
    (tmp_path / "c.toml").write_text(f'{setting} = "{value}"\n')
    args = [] if setting.endswith("root") else ["--site", str(tmp_path / "site")]
    out = cli("run", "--config", str(tmp_path / "c.toml"), *args, env={**os.environ, "DATA": str(tmp_path)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"names the environment variable {variable}, but chorus.toml expands no environment variables" in out.stderr
    assert "envsubst < chorus.toml.in > chorus.toml" in out.stderr, out.stderr
    assert "c.toml " + setting.replace("\n", " ") in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "site"]


@pytest.mark.parametrize(("option", "value", "variable"), [
    ("--db", "${DB}.sqlite", "${DB}"), ("--db", "$(DB)", "$(DB)"), ("--parquet", "$SNAPS", "$SNAPS"),
    ("--out", "%OUT%.html", "%OUT%"), ("--config", "$CFG/chorus.toml", "$CFG"), ("--site", "$SITE/x", "$SITE"),
])
def test_an_environment_variable_no_shell_filled_in_is_refused_in_a_path_option(tmp_path, option, value, variable):
    """A path option naming a variable nothing filled in (single quotes in a cron line, a container's exec-form
    command, a Kubernetes `$(DB)` not defined): `run --db '${DB}.sqlite'` made a new manifest named so in the working
    folder and recorded every file as added; `--parquet '$SNAPS'` a folder '$SNAPS'; `--site '$SITE/x'` was "a typo,
    or a disk that is not mounted?". Exit 2 naming the variable, nothing made; a folder of that very name is taken."""
    write(tmp_path / "site", "OMOP/a.csv")
    db = tmp_path / "m.sqlite"
    assert main_here("run", "-q", "--no-validate", "--site", str(tmp_path / "site"), "--db", str(db)).returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    command = {"--out": ["report", "--db", str(db)], "--config": ["versions", "--db", str(db)],
               "--db": ["run", "--site", str(tmp_path / "site")],
               "--parquet": ["run", "--site", str(tmp_path / "site"), "--db", str(db)], "--site": ["run"]}[option]
    out = cli(*command, option, value, "-q", cwd=work, env={"HOME": str(tmp_path)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"names the environment variable {variable}, but nothing filled it in" in out.stderr, out.stderr
    assert list(work.iterdir()) == []
    if option == "--parquet":  # a folder really named so is taken as written
        (work / value).mkdir()
        assert cli(*command, option, value, "-q", "--no-validate", cwd=work).returncode == 0


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_db_that_is_a_named_pipe_or_a_device_is_a_usage_error(tmp_path, kind):
    """`--db /dev/null` (a script's placeholder) was "the manifest's file system failed: disk I/O error", exit 3, in
    `run` (after writing /dev/null.lock and /dev/null-journal beside it), and in `versions` "the manifest at
    /dev/null is empty; run `chorus-batch run`"; a named pipe "cannot open the manifest". Exit 2 saying what it is,
    in every command, before a lock or anything else is made."""
    write(tmp_path / "site", "OMOP/a.csv")
    if kind == "fifo":
        db = tmp_path / "m.sqlite"
        os.mkfifo(db)
    else:
        db = Path("/dev/null")
    said = "a named pipe (FIFO)" if kind == "fifo" else "a device"
    for command in (["run", "--site", str(tmp_path / "site")], ["versions"], ["files"], ["upgrade"]):
        out = cli(*command, "--db", str(db), timeout=60)
        assert out.returncode == 2 and "internal error" not in out.stderr, out.stderr
        assert f"--db names {said}, not a manifest file: {db}; nothing was done" in out.stderr, out.stderr
    assert not [side for side in (".lock", "-journal", "-wal", "-shm") if os.path.lexists(f"{db}{side}")]


@pytest.mark.parametrize("setting", ["[site]\nroot", "[site.roots]\nImages", "[manifest]\ndb", "[manifest]\nparquet"])
def test_a_nul_character_in_a_config_path_is_a_usage_error(tmp_path, setting):
    """TOML writes a NUL as "\\u0000" (a template filled by a script that left one in): every command that read the
    file said "internal error: ValueError: embedded null byte", exit 3. Exit 2 naming the setting; nothing made."""
    write(tmp_path / "site", "OMOP/a.csv")
    (tmp_path / "c.toml").write_text(f'{setting} = "x\\u0000y"\n')
    for command in (["run", "--site", str(tmp_path / "site")], ["versions"]):
        out = cli(*command, "--config", str(tmp_path / "c.toml"), cwd=tmp_path)
        assert out.returncode == 2 and "internal error" not in out.stderr, out.stderr
        assert "holds a NUL character (\\u0000), which no path can hold" in out.stderr, out.stderr
        assert "c.toml " + setting.replace("\n", " ") in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "site"]


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
@pytest.mark.parametrize(("where", "value"), [
    ("config", "C:\\chorus\\m.sqlite"), ("config", "D:/chorus/m.sqlite"), ("config", "\\\\server\\share\\m.sqlite"),
    ("--db", "C:\\chorus\\m.sqlite"), ("--db", "\\\\server\\share\\m.sqlite"),
])
def test_a_windows_manifest_path_on_linux_is_refused_not_made_in_the_working_folder(tmp_path, where, value):
    """A chorus.toml copied from the site's Windows machine (`db = 'C:\\chorus\\m.sqlite'`), or such a --db: `run`
    made a new, empty manifest named 'C:\\chorus\\m.sqlite' in the working folder (the config's) and added every file
    again; now exit 2 naming the setting, nothing made. A file of that very name is taken as written."""
    write(tmp_path / "site", "OMOP/a.csv")
    work = tmp_path / "work"
    work.mkdir()
    (work / "c.toml").write_text(f"[manifest]\ndb = '{value}'\n" if where == "config" else "")
    given = ["--db", value] if where == "--db" else []
    for command in (["run", "--site", str(tmp_path / "site")], ["versions"]):
        out = cli(*command, "--config", str(work / "c.toml"), *given, cwd=work)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert f"{value}: a Windows path (a drive or a network share), and this machine is not Windows" in out.stderr
        assert ("c.toml [manifest] db" if where == "config" else "where: --db") in out.stderr, out.stderr
    assert sorted(p.name for p in work.iterdir()) == ["c.toml"]
    # a file really named so (made by an earlier release's run) is the manifest it names
    (work / value).parent.mkdir(parents=True, exist_ok=True)
    assert main_here("run", "-q", "--no-validate", "--db", str(work / value), "--site", str(tmp_path / "site")).returncode == 0
    out = cli("versions", "--config", str(work / "c.toml"), *given, cwd=work)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("option, value", [("--parquet", "C:\\snaps"), ("--out", "D:/r.html"),
                                           ("--delete-list", "\\\\server\\share\\gone.txt")])
def test_a_windows_path_given_to_any_path_option_is_refused_not_made_here(tmp_path, option, value):
    """--parquet 'C:\\snaps' or report --out 'D:/r.html' pasted from the Windows machine's notes made a folder or file of
    that name in the working folder (as --db's was: only --db and [manifest] were checked); now exit 2 naming it."""
    write(tmp_path / "site", "OMOP/a.csv")
    db = tmp_path / "m.sqlite"
    assert main_here("run", "-q", "--no-validate", "--site", str(tmp_path / "site"), "--db", str(db)).returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    command = {"--parquet": ["run", "--site", str(tmp_path / "site")], "--out": ["report"],
               "--delete-list": ["run", "--mode", "append", "--site", str(tmp_path / "site")]}[option]
    out = cli(*command, "--db", str(db), option, value, cwd=work)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{option} {value}: a Windows path (a drive or a network share)" in out.stderr, out.stderr
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("command, option", [
    (["versions", "--db"], "--db"), (["run", "--parquet"], "--parquet"),
    (["run", "--shard", "1/2", "--staging"], "--staging"),
    (["run", "--mode", "append", "--delete-list"], "--delete-list"), (["versions", "--config"], "--config"),
    (["import-config"], "CONFIG"), (["import-journal", "--db", "j.sqlite"], "JOURNAL"), (["testdata"], "OUT"),
    (["versions", "--config", "c.toml"], "c.toml [manifest] db"),
])
def test_a_dash_given_to_a_path_option_says_standard_input_or_output_is_not_taken(tmp_path, command, option):
    """`--db -` (as other tools read standard input) said "no manifest at /home/x/-"; `run --parquet -` and
    `--staging -` made a folder named '-' in the working folder; `--config -` was "config file not found". Now exit
    2 saying '-' is not standard input or output there, and what to give; nothing made. report's --out - is standard
    output still."""
    write(tmp_path / "site", "OMOP/a.csv")
    db = tmp_path / "m.sqlite"
    assert main_here("run", "-q", "--no-validate", "--site", str(tmp_path / "site"), "--db", str(db)).returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    (work / "c.toml").write_text("[manifest]\ndb = '-'\n")
    site = ["--site", str(tmp_path / "site"), "--db", str(db)] if command[0] == "run" else []
    out = cli(*command, *([] if option.startswith("c.toml") else ["-"]), *site, cwd=work)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    reads = option in ("--delete-list", "--config", "CONFIG")
    said = "standard input" if reads else "standard input or output"
    assert f"{option} -: '-' is not {said} here; this takes a path" in out.stderr, out.stderr
    assert (f"give {option} /dev/stdin" if reads else "./- for one named '-'") in out.stderr, out.stderr
    assert sorted(p.name for p in work.iterdir()) == ["c.toml"]
    report = cli("report", "--db", str(db), "--out", "-", cwd=work)
    assert report.returncode == 0 and report.stdout.startswith("<!DOCTYPE html>"), report.stderr


@pytest.mark.parametrize("where", ["--db", "config", "--out"])
def test_a_relative_path_with_windows_separators_is_refused_not_made_beside_its_folder(tmp_path, where):
    """`db = "manifests\\site.sqlite"` in a chorus.toml shared with the site's Windows machine (or `--db` /
    `report --out` with backslashes from its notes): on Linux `run` made a new, empty manifest named
    'manifests\\site.sqlite' beside the folder manifests/ and recorded every file as added again; now exit 2 saying
    '\\' separates folders on Windows only, and the '/' form to give. A file really named so is taken; a backslash
    where no such folder is there is left alone (part of a name)."""
    write(tmp_path / "site", "OMOP/a.csv")
    work = tmp_path / "work"
    (work / "manifests").mkdir(parents=True)
    db = work / "manifests" / "site.sqlite"
    assert main_here("run", "-q", "--no-validate", "--site", str(tmp_path / "site"), "--db", str(db)).returncode == 0
    value = "manifests\\r.html" if where == "--out" else "manifests\\site.sqlite"
    (work / "c.toml").write_text(f"[manifest]\ndb = '{value}'\n" if where == "config" else "")
    command = (["report", "--db", str(db), "--out", value] if where == "--out" else
               ["run", "--site", str(tmp_path / "site"), *(["--db", value] if where == "--db" else [])])
    before = sorted(p.name for p in work.rglob("*"))
    out = cli(*command, "--config", str(work / "c.toml"), cwd=work)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "'\\' separates folders on Windows only" in out.stderr and "manifests/" in out.stderr, out.stderr
    assert sorted(p.name for p in work.rglob("*")) == before
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    # a name with a backslash of its own, where no such folder is: as before (a file of that name)
    assert cli("report", "--db", str(db), "--out", "no folder\\r.html", cwd=work).returncode == 0
    assert (work / "no folder\\r.html").is_file()


@pytest.mark.parametrize("command, value", [
    (["registry", "--out"], "s3://site-bucket/registries"), (["report", "--out"], "s3://site-bucket/r.html"),
    (["review", "--out"], "az://reports/r.ipynb"), (["report", "--out"], "file:///tmp/r.html"),
    (["versions", "--config"], "s3://site-bucket/chorus.toml"), (["testdata"], "s3://site-bucket/testdata"),
    (["import-config"], "https://example.org/config.toml?sig=SECRETSIG"),
    (["run", "--mode", "append", "--delete-list"], "s3://site-bucket/gone.txt"),
])
def test_a_url_given_to_a_local_path_option_is_refused_not_made_here(tmp_path, command, value):
    """`registry --out s3://bucket/reg` wrote its registries into a folder 's3:/bucket/reg' made in the working folder
    and exited 0; `report --out s3://b/r.html` said "its folder s3:/b does not exist: create the folder first";
    testdata OUT made 's3:/...' too; --config and --delete-list "not found". Each took the URL as a relative path
    (only file: URLs without '//' and Windows paths were checked). Exit 2 naming the URL (masked), nothing made."""
    write(tmp_path / "site", "OMOP/a.csv")
    db = tmp_path / "m.sqlite"
    assert main_here("run", "-q", "--no-validate", "--site", str(tmp_path / "site"), "--db", str(db)).returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    extra = [] if command[0] in ("testdata", "import-config") else ["--db", str(db)]
    if command[0] == "run":
        extra += ["--site", str(tmp_path / "site")]
    if command[0] in ("run", "versions"):
        extra.append("--json")
    out = cli(*command, value, *extra, cwd=work)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{value.split('?')[0]}" in out.stderr and " is a URL (" in out.stderr, out.stderr
    assert "where a path on this machine is taken" in out.stderr, out.stderr
    assert "SECRETSIG" not in out.stderr + out.stdout
    if value.startswith("file://"):
        assert "give the path itself: /tmp/r.html" in out.stderr, out.stderr
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("where", ["--db", "config", "--parquet", "JOURNAL", "--site"])
def test_a_path_too_long_for_the_file_system_is_a_usage_error(tmp_path, where):
    """A --db (or [manifest] db, --parquet, import-journal's JOURNAL) whose name part is past the file system's limit
    (a variable pasted in twice) was "internal error: OSError: [Errno 36] File name too long", exit 3, in `versions`
    and every command. Exit 2 naming the option, asked of the file system itself; nothing made."""
    write(tmp_path / "site", "OMOP/a.csv")
    work = tmp_path / "work"
    work.mkdir()
    long = "m" * 300
    (work / "c.toml").write_text(f"[manifest]\ndb = '{long}.sqlite'\n" if where == "config" else "")
    command = {"--db": ["versions", "--db", f"{long}.sqlite"], "config": ["versions"],
               "--parquet": ["run", "--site", str(tmp_path / "site"), "--db", "m.sqlite", "--parquet", long],
               "JOURNAL": ["import-journal", long, "--db", "m.sqlite"],
               # (it said "not a readable directory" with the whole path and "point --site at the folder that holds OMOP/")
               "--site": ["run", "--site", str(tmp_path / long), "--db", "m.sqlite"]}[where]
    out = cli(*command, "--config", str(work / "c.toml"), "--json", cwd=work) if where != "JOURNAL" else \
        cli(*command, "--json", cwd=work)
    assert out.returncode == 2 and "internal error" not in out.stderr, out.stderr
    assert "the path is too long for the file system (its longest name part has 30" in out.stderr, out.stderr
    assert ("[manifest] db" if where == "config" else f"where: {where}") in out.stderr, out.stderr
    assert json.loads(out.stdout)["exit_code"] == 2
    assert sorted(p.name for p in work.iterdir()) == ["c.toml"]


@pytest.mark.parametrize(("where", "value", "meant"), [
    ("--db", "file:m.sqlite", "m.sqlite"), ("--db", "file:m.sqlite?mode=ro", "m.sqlite"),
    ("--db", "file:/data/my%20m.sqlite", "/data/my m.sqlite"), ("config", "file:m.sqlite", "m.sqlite"),
    ("--parquet", "file:snaps", "snaps"),
])
def test_a_file_url_without_slashes_given_as_a_path_is_refused_not_made_here(tmp_path, where, value, meant):
    """`--db file://...` was refused, but `run --db file:m.sqlite` (an SQLite URI, or a site root's `file:/p` form)
    started a new, empty manifest named 'file:m.sqlite' in the working folder and added every file again, and
    `--db file:/data/m.sqlite` was told to `mkdir -p ./file:/data`. Exit 2 naming the path meant, nothing made; a
    file of that very name is taken as written."""
    write(tmp_path / "site", "OMOP/a.csv")
    work = tmp_path / "work"
    work.mkdir()
    (work / "c.toml").write_text(f"[manifest]\ndb = '{value}'\n" if where == "config" else "")
    given = [where, value] if where != "config" else []
    out = cli("run", "--site", str(tmp_path / "site"), "--config", str(work / "c.toml"), *given, cwd=work)
    assert out.returncode == 2 and "a file: URL (or an SQLite URI), and this option takes a plain path" in out.stderr
    assert f"give the path itself: {meant}" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert sorted(p.name for p in work.iterdir()) == ["c.toml"]
    if where == "--db" and "/" not in value:  # a file really named so (an earlier release's) is the manifest it names
        assert main_here("run", "-q", "--no-validate", "--db", str(work / value), "--site", str(tmp_path / "site")).returncode == 0
        assert cli("versions", "--db", value, cwd=work).returncode == 0


def test_a_folder_really_named_with_a_dollar_is_taken_as_written(tmp_path):
    write(tmp_path / "a$DIR" / "site", "OMOP/a.csv")
    (tmp_path / "c.toml").write_text('[site]\nroot = "a$DIR/site"\n[manifest]\ndb = "a$DIR/m$1.sqlite"\n'
                                     '[run]\nvalidate = false\n')
    out = main_here("run", "-q", "--config", str(tmp_path / "c.toml"))
    assert out.returncode == 0, out.stderr
    assert query(tmp_path / "a$DIR" / "m$1.sqlite", "SELECT n_files FROM versions") == [(1,)]


def test_a_config_every_user_may_change_is_warned_of(tmp_path):
    """Saved under umask 000 (mode 666), a root cron job's chorus.toml let any user choose its site and manifest."""
    write(tmp_path / "site", "OMOP/a.csv")
    config = tmp_path / "c.toml"
    config.write_text('[run]\nvalidate = false\n')
    args = ("run", "-q", "--config", str(config), "--site", str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite"))
    config.chmod(0o666)
    out = cli(*args)
    assert out.returncode == 0 and "may be changed by every user of this machine (mode -rw-rw-rw-)" in out.stderr \
        and f"chmod o-w {config}" in out.stderr, out.stderr
    config.chmod(0o664)  # a group's shared config: nothing said
    out = cli(*args)
    assert out.returncode == 0 and "every user" not in out.stderr, out.stderr


def test_a_writable_config_is_not_warned_of_on_windows(tmp_path):
    """Windows reports every writable file as mode rw-rw-rw- (its mode bits hold only the read-only flag; an ACL says
    who may write): each run there warned that every user may change chorus.toml, and said to `chmod o-w` it."""
    write(tmp_path / "site", "OMOP/a.csv")
    config = tmp_path / "c.toml"
    config.write_text('[run]\nvalidate = false\n')
    config.chmod(0o666)  # what os.stat says of any writable file on Windows
    windows = "import os, runpy, sys\ndel os.getuid\nsys.argv[0] = 'chorus-batch'\n" \
              "runpy.run_module('chorus_batch', run_name='__main__', alter_sys=True)\n"
    out = subprocess.run([sys.executable, "-c", windows, "run", "-q", "--config", str(config), "--site",
                          str(tmp_path / "site"), "--db", str(tmp_path / "m.sqlite")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "every user" not in out.stderr and "chmod" not in out.stderr, out.stderr


def test_a_config_not_in_utf8_names_the_line(tmp_path):
    """It said "'utf-8' codec can't decode byte 0xf4 in position 16": a byte count, and "check the permissions"."""
    (tmp_path / "c.toml").write_bytes(b'[site]\nname = "h\xf4pital"\n')
    out = main_here("run", "--config", str(tmp_path / "c.toml"), "--site", str(tmp_path), "--db", str(tmp_path / "m.sqlite"))
    assert out.returncode == 2, out.stderr
    assert "is not UTF-8: byte 0xf4 on line 2" in out.stderr and "save the file as UTF-8" in out.stderr, out.stderr


def test_a_config_with_lines_ended_by_cr_alone_says_so(tmp_path):
    """Lines ended by CR alone (classic Mac OS, some exporters): TOML reads the file as one line, and the error was
    "Expected newline or end of document after a statement (at line 1, column 7)", of a line an editor shows as right;
    "fix the TOML syntax at the position given"."""
    (tmp_path / "c.toml").write_bytes(b'[site]\rname = "a"\r')
    out = main_here("run", "--config", str(tmp_path / "c.toml"), "--site", str(tmp_path), "--db", str(tmp_path / "m.sqlite"))
    assert out.returncode == 2, out.stderr
    assert "its lines end in a carriage return alone (CR, without LF)" in out.stderr, out.stderr
    assert "fix:   save it with LF (or CRLF) line ends" in out.stderr and not (tmp_path / "m.sqlite").exists()


def test_a_config_written_with_a_byte_order_mark_is_read(tmp_path):
    """Notepad's UTF-8 starts with a byte-order mark: 'not valid TOML: Invalid statement (at line 1, column 1)'."""
    write(tmp_path / "site", "OMOP/a.csv")
    (tmp_path / "c.toml").write_bytes(b'\xef\xbb\xbf[site]\nname = "site-bom"\n[run]\nvalidate = false\n')
    db = tmp_path / "m.sqlite"
    out = main_here("run", "--config", str(tmp_path / "c.toml"), "--site", str(tmp_path / "site"), "--db", str(db), "-q")
    assert out.returncode == 0, out.stderr
    assert query(db, "SELECT site FROM versions") == [("site-bom",)]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom"])
def test_a_config_saved_as_utf16_with_a_byte_order_mark_is_read(tmp_path, encoding):
    """Windows PowerShell 5's `>` (`chorus-batch import-config config.toml > chorus.toml`) and Notepad's "Unicode" save
    UTF-16 with a byte-order mark: it was "not UTF-8: byte 0xff on line 1 (a Latin-1 or Windows-1252 letter)"."""
    write(tmp_path / "site", "OMOP/a.csv")
    text = '[site]\r\nname = "site-sixteen"\r\n[run]\r\nvalidate = false\r\n'
    data = text.encode("utf-16") if encoding == "utf-16" else b"\xfe\xff" + text.encode("utf-16-be")
    (tmp_path / "c.toml").write_bytes(data)
    db = tmp_path / "m.sqlite"
    out = main_here("run", "--config", str(tmp_path / "c.toml"), "--site", str(tmp_path / "site"), "--db", str(db), "-q")
    assert out.returncode == 0, out.stderr
    assert query(db, "SELECT site FROM versions") == [("site-sixteen",)]


@pytest.mark.parametrize(("data", "said"), [
    ('[site]\nname = "x"\n'.encode("utf-16-le"), "is UTF-16 text without a byte-order mark, not UTF-8"),
    ('[site]\nname = "x"\n'.encode("utf-16-be"), "is UTF-16 text without a byte-order mark, not UTF-8"),
    (b"\xff\xfe[\x00s", "is UTF-16 text cut short"),
])
def test_a_config_in_utf16_it_cannot_read_says_so(tmp_path, data, said):
    """Without a byte-order mark it was "Invalid statement (at line 1, column 1)" (big-endian) or "byte 0x00"."""
    (tmp_path / "c.toml").write_bytes(data)
    out = main_here("run", "--config", str(tmp_path / "c.toml"), "--site", str(tmp_path), "--db", str(tmp_path / "m.sqlite"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert said in out.stderr and "save the file as UTF-8" in out.stderr and "Latin-1" not in out.stderr, out.stderr
    assert not (tmp_path / "m.sqlite").exists()


def test_a_site_that_is_a_file_or_lies_under_one_is_said_as_such(tmp_path):
    """A file given as the site, or a path under one, was "not a readable directory" as a missing folder is: which of
    the three it is tells the fix (a typo, a disk not mounted, the wrong path)."""
    (tmp_path / "notes.txt").write_text("x")
    for given, why in ((tmp_path / "notes.txt", "is a file, not a folder"),
                       (tmp_path / "notes.txt" / "site", f"lies under {tmp_path / 'notes.txt'}, which is a file")):
        out = main_here("run", "--site", str(given), "--db", str(tmp_path / "m.sqlite"))
        assert out.returncode == 2 and f"site root is not a readable directory: {given} {why}" in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_missing_site_is_a_usage_error(tmp_path):
    out = main_here("run", "--site", str(tmp_path / "nowhere"), "--db", str(tmp_path / "m.sqlite"))
    assert out.returncode == 2 and "not a readable directory" in out.stderr
    assert f"{tmp_path / 'nowhere'} does not exist (a typo, or a disk that is not mounted?)" in out.stderr, out.stderr
    # exit 2 is "nothing was done": no manifest (nor its lock) is created for a mistyped site
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@pytest.mark.parametrize("end, said", [("\r", "a carriage return"), (" ", "a space or a tab")])
def test_a_site_whose_name_ends_in_white_space_names_the_folder_that_is_there(tmp_path, end, said):
    # `--site "$(cat site.txt)"` of a file saved with Windows line ends, or `root = "/data/site "`: "does not exist
    # (a typo, or a disk that is not mounted?)" of a folder that is there, where --db's name was said as such
    write(tmp_path / "site", "OMOP/person.csv")
    (tmp_path / "c.toml").write_text(f'[site]\nroot = "site{end.encode("unicode_escape").decode()}"\n')
    for args in (["--site", str(tmp_path / "site") + end], ["--config", str(tmp_path / "c.toml")]):
        out = main_here("status", *args, "--db", str(tmp_path / "m.sqlite"))
        assert out.returncode == 2, out.stderr
        assert f"does not exist, but {tmp_path / 'site'} does: the name ends with white space ({said}" in out.stderr
        assert "give the path without it" in out.stderr and "a typo" not in out.stderr, out.stderr


@pytest.mark.parametrize(("variable", "value"), [
    ("CHORUS_BATCH_PROGRESS_S", "5s"), ("CHORUS_BATCH_PROGRESS_S", "nan"), ("CHORUS_BATCH_CHECKPOINT_S", "-1"),
    ("CHORUS_BATCH_PARTITION_ROWS", "abc"), ("CHORUS_BATCH_LEDGER_ROWS", "2.5"), ("CHORUS_BATCH_RETRY_DEADLINE_S", "x"),
    ("CHORUS_BATCH_BUSY_WAIT_S", "15m"), ("CHORUS_BATCH_READ_TIMEOUT_S", "0"), ("CHORUS_BATCH_READ_TIMEOUT_S", "10s"),
    # a batch script's thread count for polars: 0 panicked at the first query (a Rust backtrace, exit 1, the `runs`
    # row unfinished); one polars cannot read it ignored
    ("POLARS_MAX_THREADS", "0"), ("POLARS_MAX_THREADS", "all"),
    # Python's int() takes these, polars' own parser does not: it warned "illegal value" and ran on every CPU
    ("POLARS_MAX_THREADS", "1_0"), ("POLARS_MAX_THREADS", "\u0662"),
    # a relative cache folder put a manifest's working copy under whichever folder the command started in
    ("CHORUS_BATCH_CACHE_DIR", "cache"),
])
def test_a_documented_variable_with_a_bad_value_is_a_usage_error_before_anything_is_done(site, tmp_path, variable, value):
    # It was taken silently as the default (PROGRESS_S, CHECKPOINT_S), or was a ValueError in the middle of a
    # merge or an upload (PARTITION_ROWS, LEDGER_ROWS)
    write(site, "OMOP/a.csv", b"a")
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--json",
              env={variable: value})
    # no summary of a run that did not happen: only the error, as JSON (--json)
    assert out.returncode == 2 and json.loads(out.stdout)["exit_code"] == 2, (out.returncode, out.stdout, out.stderr)
    assert f"environment variable {variable}={value!r}" in out.stderr and "fix:" in out.stderr, out.stderr
    assert not (tmp_path / "m.sqlite").exists()


def test_a_relative_xdg_cache_home_is_ignored_as_the_xdg_spec_says(monkeypatch, tmp_path, caplog):
    """XDG_CACHE_HOME=cache was taken from the current folder; the spec says a relative value is invalid."""
    from chorus_batch.store.remote import cache_base

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHORUS_BATCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    assert cache_base() == tmp_path / "home" / ".cache" / "chorus-batch"
    assert "XDG_CACHE_HOME='cache' is not an absolute path; it is ignored" in caplog.text
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_base() == tmp_path / "xdg" / "chorus-batch"


def test_documented_variables_with_good_or_empty_values_are_taken(site, tmp_path):
    write(site, "OMOP/a.csv", b"a")
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "-q",
              env={"CHORUS_BATCH_PROGRESS_S": "0", "CHORUS_BATCH_CHECKPOINT_S": "2.5", "CHORUS_BATCH_PARTITION_ROWS": "",
                   "POLARS_MAX_THREADS": "1"})
    assert out.returncode == 0, out.stderr


def test_an_empty_polars_max_threads_is_unset_not_passed_to_polars(site, tmp_path):
    """`POLARS_MAX_THREADS=$THREADS` with THREADS unset in a batch script: README says an empty variable is unset, but
    polars was handed the empty text (a Python "UserWarning: illegal value ''" in the run's output) and the command line
    took it as set by the site, so a Slurm job's SLURM_CPUS_PER_TASK no longer capped polars' threads."""
    write(site, "OMOP/a.csv", b"a")
    probe = ("import os, sys; from chorus_batch.processes import cap_library_threads; cap_library_threads(); "
             "print(repr(os.environ.get('POLARS_MAX_THREADS')))")
    capped = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "POLARS_MAX_THREADS": " ", "SLURM_CPUS_PER_TASK": "1"})
    assert capped.stdout.strip() == ("'1'" if len(os.sched_getaffinity(0)) > 1 else "None"), capped
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "-q",
              env={"POLARS_MAX_THREADS": ""})
    assert out.returncode == 0, out.stderr
    assert "illegal value" not in out.stderr and "Warning" not in out.stderr, out.stderr


def test_a_misspelt_variable_is_warned_of_not_taken_silently(site, tmp_path):
    """CHORUS_BATCH_PROGRES_S=60 in a cron job left the default of 5 s in force, and nothing said so."""
    write(site, "OMOP/a.csv", b"a")
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "-q",
              env={"CHORUS_BATCH_PROGRES_S": "60", "CHORUS_BATCH_CHECKPOINT_S": "2.5"})
    assert out.returncode == 0, out.stderr
    assert ("environment variable CHORUS_BATCH_PROGRES_S is not one chorus-batch reads; it is ignored (did you mean "
            "CHORUS_BATCH_PROGRESS_S?)") in out.stderr, out.stderr
    assert "CHORUS_BATCH_CHECKPOINT_S is not" not in out.stderr


def test_on_off_flags_override_chorus_toml_in_both_senses(tmp_path):
    """README: "command-line options override it". `validate = false`, `follow_symlinks = true` and
    `default_excludes = false` in [run] could not be overridden for one run: there was only --no-validate,
    --follow-symlinks and --no-default-excludes (`--validate` was "unrecognized argument")."""
    site = tmp_path / "site"
    write(site, "OMOP/a.csv", b"a")
    write(site, ".DS_Store", b"junk")
    (site / "OMOP" / "link.csv").symlink_to(tmp_path / "outside.csv")
    (tmp_path / "outside.csv").write_text("x")
    (tmp_path / "c.toml").write_text('[site]\nroot = "site"\n[manifest]\ndb = "m.sqlite"\n[run]\nvalidate = false\n'
                                     'follow_symlinks = true\ndefault_excludes = false\n')

    def status(*flags: str) -> dict:
        out = main_here("status", "--json", "--config", str(tmp_path / "c.toml"), *flags)
        assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr
        return json.loads(out.stdout)

    as_set = status()  # the file's settings: the link followed, the junk tracked, nothing checked
    assert {c["srcfile"] for c in as_set["changes"]} == {"OMOP/a.csv", "OMOP/link.csv", ".DS_Store"}, as_set["changes"]
    assert as_set["findings"] is None
    flags = status("--validate", "--no-follow-symlinks", "--default-excludes")
    assert {c["srcfile"] for c in flags["changes"]} == {"OMOP/a.csv"}, flags["changes"]
    assert flags["excluded"]["default"] == 1 and flags["errors"]["by_kind"] == {"symlink": 1}, flags
    assert flags["findings"] is not None and flags["findings"]["total"] >= 0, flags
    out = main_here("run", "--slurm", "--no-follow-symlinks", "--config", str(tmp_path / "c.toml"))
    assert out.returncode == 2 and "run --slurm does not pass on --no-follow-symlinks" in out.stderr, out.stderr


@pytest.mark.parametrize(("args", "told"), [
    (["run", "--version", "-x"], "not as a value: write --version=-x\n"),
    (["diff", "--from", "-x"], "not as a value: write --from=-x\n"),
    (["upload", "--to", "-x"], "not as a value: write --to=-x\n"),
    (["run", "--site", "-data"], "not as a name: write --site=-data or --site ./-data\n"),
])
def test_a_value_starting_with_a_dash_is_told_how_to_be_typed_as_that_option_takes_it(tmp_path, args, told):
    """`run --version -x` was told "write --version=-x or --version ./-x": './-x' is a path's way, no label's (nor a
    time's, a container URL's); only an option that takes a path is told it."""
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2 and told in out.stderr, out.stderr


def test_read_commands_take_the_manifest_of_a_config_elsewhere_relative_to_its_folder(site, tmp_path):
    # `versions --config FILE` was "unrecognized argument --config": only ./chorus.toml was read
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "chorus.toml").write_text('[site]\nroot = "../site"\n[manifest]\ndb = "m.sqlite"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = ["--config", "../etc/chorus.toml"]
    assert cli("run", *config, "--no-validate", "-q", cwd=elsewhere).returncode == 0
    label = json.loads(cli("versions", *config, "--json", cwd=elsewhere).stdout)[0]["label"]
    for args in (["versions"], ["changes"], ["files"], ["diff", "--from", label], ["history", "OMOP/person.csv"],
                 ["upgrade"], ["report", "--out", str(tmp_path / "r.html")]):
        out = cli(*args, *config, cwd=elsewhere)
        assert out.returncode == 0, (args, out.stderr)
    assert json.loads(cli("files", *config, "--json", cwd=elsewhere).stdout)[0]["srcfile"] == "OMOP/person.csv"
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # nothing written where the command ran


def test_a_relative_path_there_only_from_the_current_folder_is_said_so(site, tmp_path):
    """`root = "site"` in etc/chorus.toml, run from the folder that holds site/: the root is etc/site (as README says),
    and the run said "site root is not a readable directory: .../etc/site does not exist (a typo, or a disk that is
    not mounted?)" of a folder the user sees there; a `db` so written started a new manifest beside the config file
    while the site's own was in the current folder, silently."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "chorus.toml").write_text('[site]\nroot = "site"\n')
    out = cli("status", "--config", "etc/chorus.toml", "--db", str(tmp_path / "m.sqlite"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert (f"etc/chorus.toml [site] root 'site' is relative to the config file's folder, {tmp_path / 'etc'}: it is "
            f"{tmp_path / 'etc' / 'site'}, which is not there; {site} (from the current folder) is there: write that "
            "full path if it is the one meant") in out.stderr, out.stderr
    (tmp_path / "etc" / "chorus.toml").write_text(f'[site]\nroot = "{site}"\n[manifest]\ndb = "m.sqlite"\n')
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", "m.sqlite", cwd=tmp_path).returncode == 0
    out = cli("run", "-q", "--no-validate", "--config", "etc/chorus.toml", cwd=tmp_path)
    assert "[manifest] db 'm.sqlite' is relative to the config file's folder" in out.stderr, out.stderr
    # where the path is there from the config file's folder (or nowhere), nothing is said
    out = cli("run", "-q", "--no-validate", "--config", "etc/chorus.toml", cwd=tmp_path)
    assert out.returncode == 0 and "relative to the config file's folder" not in out.stderr, out.stderr


def test_a_refused_mass_removal_says_how_many_once_and_json_stdout_holds_only_the_error(site, db):
    # "...would remove 2 of the previous version's 3 files (66.7%), more than --max-delete 50% allows; nothing was
    # committed (the run would remove 2 of the previous version's 3 files (66.7%))": the count was said twice
    for name in ("OMOP/a.csv", "OMOP/b.csv", "OMOP/c.csv"):
        write(site, name, name.encode())
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    (site / "OMOP" / "a.csv").unlink()
    (site / "OMOP" / "b.csv").unlink()
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--json")
    # stdout: no summary of a run that did not happen, only the error as one JSON object (as main says every error)
    assert out.returncode == 5 and json.loads(out.stdout)["exit_code"] == 5, (out.returncode, out.stdout)
    assert json.loads(out.stdout)["error"].count("2 of the previous version's 3 files") == 1
    error = next(line for line in out.stderr.splitlines() if line.startswith("chorus-batch: error:"))
    assert error.count("2 of the previous version's 3 files") == 1 and "nothing was committed" in error, error


@pytest.mark.parametrize("args", [
    ("run", "--parquet", ""), ("run", "--mode", "append", "--delete-list", ""), ("run", "--config", ""),
    ("run", "--shard", "0/1", "--staging", ""), ("registry", "--out", ""), ("testdata", ""), ("files", "--path", " "),
    ("report", "--out", ""), ("review", "--out", ""),
])
def test_a_value_given_empty_is_a_usage_error_naming_it(site, tmp_path, args):
    # An unset shell variable: --parquet "" made no snapshots, --delete-list "" no deletions, --config "" read
    # ./chorus.toml, and --staging "", registry --out "" and testdata "" wrote into the current folder; all exit 0
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    assert main_here("run", "--site", str(site), "--db", str(db), "--no-validate", "-q").returncode == 0
    here = tmp_path / "here"
    here.mkdir()
    command, *rest = args
    given = [] if command == "testdata" else ["--db", str(db)] + ([] if command in ("registry", "files", "report", "review") else
                                                                  ["--site", str(site), "--no-validate"])
    out = cli(command, *rest, *given, cwd=here)
    assert out.returncode == 2 and "is empty (an unset shell variable?)" in out.stderr, (out.returncode, out.stderr)
    # `report --out ""` was told "or leave --out out", which then is "the following arguments are required: --out"
    required = rest[0] == "--out" or command == "testdata"
    assert ("or leave" in out.stderr) != required, out.stderr
    assert list(here.iterdir()) == []


def test_a_parquet_snapshot_folder_as_db_of_a_command_that_needs_the_manifest_says_so(site, tmp_path):
    # it said "pass --db with a file path, e.g. SNAPSHOTS/chorus_manifest.sqlite": a manifest inside the snapshots
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    assert main_here("run", "--site", str(site), "--db", str(db), "--parquet", str(snaps), "--no-validate", "-q").returncode == 0
    assert main_here("versions", "--db", str(snaps)).returncode == 0  # read-only commands read it
    for args in (("upgrade",), ("validate",), ("status", "--site", str(site)), ("run", "--site", str(site))):
        out = cli(*args, "--db", str(snaps))
        assert out.returncode == 2 and "--parquet snapshot folder" in out.stderr, (args, out.stderr)
        assert "the SQLite manifest the snapshots were written from" in out.stderr
    assert not (snaps / "chorus_manifest.sqlite").exists()


def test_a_file_of_a_parquet_snapshot_folder_as_db_names_the_folder(site, tmp_path):
    # `files --db snaps/versions.parquet` (or a version's manifest.parquet) was told "move this one aside to start a
    # new manifest": a reviewer sent to move a snapshot away, and no word of the folder that reads
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    assert main_here("run", "--site", str(site), "--db", str(db), "--parquet", str(snaps), "--no-validate", "-q").returncode == 0
    for part in (snaps / "versions.parquet", next(snaps.glob("version=*/manifest.parquet"))):
        out = main_here("files", "--db", str(part))
        assert out.returncode == 3 and f"a file of the Parquet snapshot folder {snaps}" in out.stderr, out.stderr
        assert "start a new manifest" not in out.stderr
    (tmp_path / "other.bin").write_bytes(b"x" * 200)  # any other file: the manifest file is asked for
    assert "give the manifest file `chorus-batch run` writes" in main_here("files", "--db", str(tmp_path / "other.bin")).stderr


def test_another_file_given_to_a_reading_command_is_not_said_to_start_a_new_manifest(site, tmp_path):
    """`versions --db notes.csv` (or another program's SQLite database) was told "move this one aside to start a new
    manifest" ("or a new file name to start one"): what `run` does with it. A command that only reads, or a notebook's
    open_manifest, starts none: the reviewer who followed it was told "no manifest at" the new name. They are asked
    for the manifest file (or its --parquet folder); `run` still says how it starts a new one."""
    import contextlib
    import sqlite3

    from chorus_batch.errors import ManifestError
    from chorus_batch.review import open_manifest

    write(site, "OMOP/person.csv", b"person_id\n1\n")
    csv, other = tmp_path / "notes.csv", tmp_path / "other.sqlite"
    csv.write_text("person_id,notes\n000001,x\n" * 50)
    with contextlib.closing(sqlite3.connect(other)) as con, con:
        con.execute("CREATE TABLE t (x)")
    for db, what in ((csv, "is not a readable SQLite database"), (other, "is not a chorus-batch manifest")):
        before = db.read_bytes()
        for args in (["versions"], ["files"], ["history", "OMOP/person.csv"], ["report", "--out", str(tmp_path / "r.html")]):
            out = cli(*args, "--db", str(db))
            assert out.returncode == 3 and what in out.stderr, (args, out.stderr)
            assert "give the manifest file `chorus-batch run` writes (its --db), or its --parquet folder" in out.stderr
            assert "start one" not in out.stderr and "start a new manifest" not in out.stderr, out.stderr
        with pytest.raises(ManifestError, match="starts no new manifest"):
            open_manifest(db)
        assert "to start" in main_here("run", "--site", str(site), "--db", str(db), "-q").stderr  # run: as before
        assert db.read_bytes() == before


@pytest.mark.parametrize("command, option, value, said", [
    ("run", "--verify-sample", "200", "must be between 0 and 100, not 200"),
    ("run", "--verify-sample", "150%", "must be between 0 and 100, not 150%"),
    ("run", "--workers", "0", "must be at least 1, not 0"),
    ("validate", "--workers", "999", "must be at most 256, not 999"),
    ("status", "--limit", "0", "must be at least 1, not 0"), ("run", "--shards", "0", "must be at least 1, not 0"),
    ("slurm-script", "--cpus-per-task", "0", "must be at least 1, not 0"),
])
def test_a_number_out_of_range_is_said_with_the_value_given(tmp_path, command, option, value, said):
    """`--verify-sample 200` was "argument --verify-sample: must be between 0 and 100", the 200 not repeated (a long
    cron line: which value?); every numeric option's range is checked in one place, which now says it."""
    out = cli(command, option, value, cwd=tmp_path)
    assert out.returncode == 2 and f"argument {option}: {said}" in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_count_too_large_is_a_usage_error_not_an_internal_one(site, tmp_path):
    # status --limit 10**20 was "internal error: OverflowError: int too big to convert"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    out = main_here("status", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--limit", str(10**20), "--no-validate")
    assert out.returncode == 2 and "argument --limit: must be at most 2,147,483,647" in out.stderr, out.stderr
    assert "internal error" not in out.stderr
    assert main_here("status", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--limit", str(2**31 - 1),
               "--no-validate").returncode == 0


def test_custom_version_labels_must_increase(site, db):
    write(site, "OMOP/a.csv", b"a")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v2", "-q").returncode == 0
    write(site, "OMOP/a.csv", b"b")
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v1")
    assert out.returncode == 2 and "does not sort after" in out.stderr
    assert query(db, "SELECT label FROM versions") == [("v2",)]


@pytest.mark.skipif(os.name == "nt", reason="POSIX arguments can hold undecodable bytes")
def test_a_name_given_in_bytes_that_are_not_utf8_is_a_usage_error(site, db):
    """history, files --path/--person, changes --version, diff --from typed in a Latin-1 terminal ('\xe9' as one byte,
    handed over by Python with surrogates) were 'internal error: UnicodeEncodeError' (SQLite and polars take UTF-8
    only); now exit 2 naming the argument with its odd byte escaped."""
    write(site, "OMOP/a.csv", b"a")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    for args, name in ((["history", "OMOP/\udce9.csv"], "PATH OMOP/\\xe9.csv"),
                       (["files", "--path", "OMOP/\udce9"], "--path OMOP/\\xe9"),
                       (["files", "--person", "\udce9"], "--person \\xe9"),
                       (["changes", "--version", "v\udce9"], "--version v\\xe9"),
                       (["diff", "--from", "v\udce9"], "--from v\\xe9")):
        out = cli(*args, "--db", str(db))
        assert out.returncode == 2 and f"{name} is not valid UTF-8 text" in out.stderr, (args, out.stderr)
        assert "internal error" not in out.stderr


def test_a_version_label_differing_from_another_only_in_case_is_refused(site, db, tmp_path):
    """--version v1 after V1 sorts after it and was taken: two versions whose folders (version=V1/ and version=v1/ of
    the Parquet snapshots, V1/ and v1/ at the centre when a reviewer downloads them) are one folder on Windows and
    macOS, their files mixed. Refused before the listing; another label is taken."""
    write(site, "OMOP/a.csv", b"a")
    snaps = tmp_path / "snaps"
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "V1", "--parquet",
               str(snaps), "-q").returncode == 0
    write(site, "OMOP/a.csv", b"b")
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v1", "--parquet", str(snaps))
    assert out.returncode == 2 and "differs from the label of version 'V1' only in letter case" in out.stderr, out.stderr
    assert "listing" not in out.stderr
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v2", "-q").returncode == 0
    assert query(db, "SELECT label FROM versions ORDER BY label") == [("V1",), ("v2",)]


def test_a_version_label_that_is_no_timestamp_is_warned_of_as_the_upload_folder_it_names(site, db):
    """The upload procedure names each submission's folder at the centre YYYYMMDDhhmmss; a hand label does not."""
    write(site, "OMOP/a.csv", b"a")
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v2", "-q")
    assert out.returncode == 0, out.stderr
    assert "version label 'v2' is not a UTC timestamp (YYYYMMDDhhmmss)" in out.stderr
    assert "upload` will name this version's folder 'v2/'" in out.stderr
    other = db.with_name("other.sqlite")
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(other), "--version", "30000101000000", "-q")
    assert out.returncode == 0 and "not a UTC timestamp" not in out.stderr, out.stderr
    # A time ahead of the clock (a mistyped year) labelled every version after it one second after it, not by its UTC
    # start, unsaid; 14 digits that are no time (month 13) were taken as a timestamp
    assert "is a UTC time in the future (3000-01-01 00:00:00 UTC)" in out.stderr, out.stderr
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db.with_name("third.sqlite")), "--version",
              "20261301000000", "-q")
    assert out.returncode == 0 and "version label '20261301000000' is not a UTC timestamp" in out.stderr, out.stderr


def test_a_version_label_of_a_run_that_commits_nothing_is_said_unused(site, db):
    """A hand label was warned of as "this version's folder" (the versions after it 'v2-<UTC start>') before the
    listing, and a run with nothing to commit then made no version: said so, and the next version is not 'v2-…'."""
    write(site, "OMOP/a.csv", b"a")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v2", "-q")
    assert out.returncode == 0, out.stderr
    assert "if this run commits a version, `upload` will name" in out.stderr, out.stderr
    assert "version label 'v2' (--version) was not used: this run made no version" in out.stderr, out.stderr
    write(site, "OMOP/b.csv", b"b")
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q")
    assert out.returncode == 0 and "was not used" not in out.stderr, out.stderr
    assert all(label.isdigit() for (label,) in query(db, "SELECT label FROM versions"))


def test_a_db_path_ending_in_a_separator_is_refused_not_made_a_file(site, tmp_path):
    """`run --db dir/` made a manifest file named `dir` (the '/' is lost once the path is a Path)."""
    write(site, "OMOP/a.csv", b"a")
    folder = tmp_path / "manifests"
    for command in (["run", "--no-validate", "--site", str(site)], ["versions"]):
        out = cli(*command, "--db", f"{folder}/")
        assert out.returncode == 2 and "ends in a path separator, so it names a folder" in out.stderr, out.stderr
        assert f"{folder}/chorus_manifest.sqlite" in out.stderr
    assert not folder.exists()


def test_runs_are_logged_without_secrets(site, db, tmp_path):
    write(site, "OMOP/a.csv")
    (tmp_path / "s?sv=1&sig=abc").mkdir()  # (a folder of that very name is taken: see the next test)
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(tmp_path / "s?sv=1&sig=abc"),
              "-q")
    assert out.returncode == 0, out.stderr
    (argv,) = query(db, "SELECT argv FROM runs")[0]
    assert "sig=abc" not in argv


SAS = "se=2026-12-08T11%3A48%3A37Z&sp=rwdlac&sv=2026-10-06&ss=b&srt=sco&sig=eNJpj6z/lX69A0UvviBaaCuTNPpK42ODSiLLA5MZCyo%3D"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.mark.parametrize("secret", [SAS, "?" + SAS, KEY, "AWSKEY"])
def test_a_secret_pasted_as_a_path_is_refused_unshown_and_nothing_is_named_by_it(site, db, tmp_path, secret):
    """A SAS token or an account key pasted into a path option was taken as a name: `report --out "$SAS.html"`,
    `registry --out`, `--parquet` and `--staging` wrote files and folders named by the secret and printed their paths
    whole on standard output ("wrote .../sig=eNJ.../lX69...%3D.html", the shard's merge command); `--db "$SAS"` (or
    a key) was split at its '/' and "no manifest lX69A0...%3D there" showed the signature's part after it unmasked.
    Every path option refuses it up front, without showing it; nothing is written."""
    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETKEY"
    secret = aws if secret == "AWSKEY" else secret
    env = {"AWS_SECRET_ACCESS_KEY": aws}
    write(site, "OMOP/a.csv")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    before = set(tmp_path.rglob("*"))
    for args in (["run", "--no-validate", "--site", str(site), "--db", secret],
                 ["versions", "--db", "/data/" + secret],
                 ["run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", secret],
                 ["run", "--no-validate", "--site", str(site), "--db", str(db), "--shard", "0/1", "--staging", secret],
                 ["report", "--db", str(db), "--out", secret + ".html"],
                 ["registry", "--db", str(db), "--out", secret],
                 ["testdata", secret]):
        out = cli(*args, cwd=tmp_path, env=env)
        assert out.returncode == 2 and "looks like a secret" in out.stderr, (args, out.stdout, out.stderr)
        shown = out.stdout + out.stderr
        for part in secret.split("/"):
            assert part.removeprefix("?")[-12:] not in shown, (args, part, shown)
    assert set(tmp_path.rglob("*")) == before
    (tmp_path / "chorus.toml").write_text(f'[manifest]\nparquet = "{secret}"\n')
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(db), cwd=tmp_path, env=env)
    assert out.returncode == 2 and "looks like a secret" in out.stderr and secret[-12:] not in out.stderr, out.stderr


def test_a_secret_a_message_quotes_is_masked_on_stderr_in_json_in_the_log_and_in_runs(site, db, tmp_path, capfd):
    """Messages quote what they were given, and a SAS, an account key or a password given in the wrong place (a
    version label, the delete list's path, --config, a word argparse does not know) was printed back whole: on stderr,
    in --json's error object, in the `runs` row of a run that failed after its commit, in a log line."""
    secret = "SECRETSIG"
    write(site, "OMOP/a.csv")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    sas = f"az://c/x?sv=2024&sig={secret}"
    for args in (["run", "--db", str(db), sas], ["--site", sas, "versions"], ["run", "--config", sas, "--json"],
                 ["changes", "--db", str(db), "--version", sas, "--json"], ["run", "--mode", sas],
                 ["upload", "--db", str(db), f"--to=az://user:{secret}@c/"],
                 ["run", "--site", str(site), "--db", str(db), "--mode", "append", "--delete-list", sas, "--json"]):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert secret not in out.stdout + out.stderr and "***" in out.stdout + out.stderr, (args, out.stdout, out.stderr)

    # A failure after the commit quotes the --parquet path it could not write: in the message and in `runs`.
    snapshots = tmp_path / f"snap?sv=2024&sig={secret}"
    snapshots.mkdir()  # (a path holding a secret is refused unless it is there)
    write(site, "OMOP/b.csv")
    run = paused("run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snapshots), "--json",
                 at="committed+2")
    shutil.rmtree(snapshots, ignore_errors=True)
    snapshots.write_bytes(b"a file where the snapshot folder was")
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 3 and "was committed" in stderr, stderr
    assert secret not in stdout + stderr, stderr
    messages = " ".join(str(message) for (message,) in query(db, "SELECT message FROM runs"))
    assert "sig=***" in messages and secret not in messages, messages

    # A log line (a warning quoting an SDK's message, a traceback under -v) is masked as it is written.
    from chorus_batch.progress import log, setup_logging

    handlers, level = log.handlers[:], log.level
    try:
        setup_logging()
        log.warning(f"could not reach https://user:{secret}@host/c?sig={secret}; AccountKey={secret};")
        logged = capfd.readouterr().err
    finally:
        log.handlers[:], log.level = handlers, level
    assert "could not reach https://***@host/c?sig=***" in logged and secret not in logged, logged


def test_a_libraries_own_warning_is_masked_too_under_verbose():
    """-v took the Azure SDK's null handler away so that its own account of each credential tried is shown: its records
    then went to Python's last-resort handler, unmasked (a retry's warning quotes the SAS URL it retried). A record
    no handler of ours takes (the SDK's, urllib3's) is masked as the tool's own lines are. In a process of its own:
    pytest's handler on the root logger would take the record before the last resort."""
    code = ("import logging; from chorus_batch.progress import setup_logging; setup_logging(verbose=True); "
            "logging.getLogger('azure.core.pipeline.policies._retry').warning("
            "'Retrying https://a.blob.core.windows.net/c/x?sv=2024&sig=SECRETSIG, AccountKey=SECRETKEY;'); "
            "logging.getLogger('urllib3.connectionpool').warning('pool full: https://h/c?sig=SECRETSIG')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "azure.core.pipeline.policies._retry: Retrying https://a.blob.core.windows.net/c/x?sv=***&sig=***" in out.stderr
    assert "urllib3.connectionpool: pool full" in out.stderr and "SECRET" not in out.stderr, out.stderr


def test_a_secret_given_as_an_exclusion_glob_or_a_path_is_never_quoted_back(site, db, tmp_path):
    """A SAS URL pasted into --exclude (or [run] exclude) was taken as a glob: the run went on, and the summary's
    "--exclude/exclude '...' matched no file" warning and --json's excluded.unmatched printed it whole. `files --path`
    and `changes --path` of one printed it back in their "no files under '...'" note. The glob is refused up front
    (exit 2, masked as every error is, nothing recorded); the note is masked."""
    secret = "SECRETSIG"
    write(site, "OMOP/a.csv")
    sas = f"*?sv=2024&sig={secret}"
    for args in (["run", "--site", str(site), "--db", str(db), "--exclude", sas, "--json"],
                 ["status", "--site", str(site), "--db", str(db), "--exclude", f"https://a.blob.core.windows.net/c?sig={secret}"]):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "holds a URL or what looks like a secret" in out.stdout + out.stderr
        assert secret not in out.stdout + out.stderr and "***" in out.stdout + out.stderr, (args, out.stdout, out.stderr)
    assert not db.exists()
    (tmp_path / "chorus.toml").write_text(f'[run]\nexclude = ["scratch/*", "x?sv=1&sig={secret}"]\n')
    out = cli("status", "--site", str(site), "--db", str(db), cwd=tmp_path)
    assert out.returncode == 2 and secret not in out.stdout + out.stderr, out.stderr
    (tmp_path / "chorus.toml").unlink()
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    for command in ("files", "changes"):
        out = main_here(command, "--db", str(db), "--path", f"https://a.blob.core.windows.net/c?sv=2024&sig={secret}")
        assert out.returncode == 0 and "no " in out.stderr, out.stderr
        assert secret not in out.stdout + out.stderr and "sig=***" in out.stderr, out.stderr
    out = main_here("files", "--db", str(db), "--person", f"x?sv=2024&sig={secret}")
    assert out.returncode == 0 and "no files for person" in out.stderr and secret not in out.stderr, out.stderr


def test_an_invalid_version_label_is_refused_before_any_work(site, db):
    write(site, "OMOP/a.csv")
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "sv=2024&sig=abc")
    assert out.returncode == 2 and "invalid version label" in out.stderr and "listing" not in out.stderr
    assert not db.exists()
    # a label ending in a line break (a pasted value, $(cat label)): a pattern's `$` matches before it, and the label
    # was the version's name with the line break in it, at the centre too
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v1\n")
    assert out.returncode == 2 and "invalid version label" in out.stderr, out.stderr
    assert not db.exists()
    # a label too long for the pattern was told to "use up to 64" characters, and one of 50 to 64 then "at most 49"
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v" * 70)
    assert out.returncode == 2 and "use up to 49 letters" in out.stderr and "64 letters" not in out.stderr, out.stderr
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v" * 60)
    assert out.returncode == 2 and "use at most 49 characters" in out.stderr, out.stderr
    assert not db.exists()

def test_a_bare_account_key_or_a_secret_of_the_environment_given_in_the_wrong_place_is_never_quoted_or_recorded(
        site, db, tmp_path):
    """Only a secret with its name (sig=, AccountKey=, password=) was masked: an Azure account key pasted alone
    ("$AZURE_STORAGE_KEY" as --exclude, --version, --rule, --to, --db) was quoted back whole in the error, and as an
    --exclude glob the run went on and recorded it in `runs`.argv; so was the value of AWS_SECRET_ACCESS_KEY. A key of
    an account key's shape (88 base64 characters ending '==') and the values of the secret variables the tool reads
    are masked wherever text is shown or kept."""
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    aws = "wJalrXUtnFEMIDUMMYbPxRfiCYEXAMPLEKEYaw12"
    env = {"AWS_SECRET_ACCESS_KEY": aws}
    write(site, "OMOP/a.csv")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    for secret in (key, aws):
        for args in (["run", "--no-validate", "--site", str(site), "--db", str(db), "--version", secret],
                     ["validate", "--db", str(db), "--rule", secret], ["upload", "--db", str(db), "--to", secret],
                     ["versions", "--db", secret], ["run", "--no-validate", "--site", str(site), "--db", str(db),
                                                    "--exclude", secret, "--json"]):
            out = cli(*args, cwd=tmp_path, env=env)
            assert secret not in out.stdout + out.stderr and "***" in out.stdout + out.stderr, (args, out.stdout,
                                                                                                 out.stderr)
    argv = " ".join(a for (a,) in query(db, "SELECT argv FROM runs"))
    assert key not in argv and aws not in argv, argv


def test_the_value_of_a_variable_chorus_toml_names_for_a_secret_is_never_quoted_or_recorded(site, db, tmp_path):
    """Only the default variables' values were masked (AZURE_STORAGE_KEY, ...): with `[azure] account_key_env =
    "SITE_KEY"` the value of SITE_KEY, a secret of no shape of its own, given as an --exclude glob was taken, printed
    in the run's JSON and recorded in `runs`.argv."""
    secret = "no-shape-site-secret-0123456789"
    config = tmp_path / "chorus.toml"
    config.write_text(f'[site]\nroot = "{site}"\n[manifest]\ndb = "{db}"\n[azure]\naccount_key_env = "SITE_KEY"\n')
    write(site, "OMOP/a.csv")
    env = {"SITE_KEY": secret}
    out = cli("run", "--no-validate", "--config", str(config), "--exclude", secret, "--json", cwd=tmp_path, env=env)
    # refused as a secret given as a glob is (it was taken, and the run went on and recorded it)
    assert out.returncode == 2 and "invalid exclusion glob '***'" in out.stderr, out.stdout + out.stderr
    assert secret not in out.stdout + out.stderr
    if db.exists():
        argv = " ".join(a for (a,) in query(db, "SELECT argv FROM runs"))
        assert secret not in argv, argv



def test_a_version_label_windows_reserves_as_a_device_name_is_refused(site, db):
    """The label is the version's folder at the central container, which a reviewer downloads (and
    where `run --version` refuses a label that is an earlier one's in other letter case: one folder on Windows). A
    label that is a device name Windows reserves, in any case and with any extension (CON, nul, com1, AUX.v2, as
    file.unportable_name says of a site's names), was taken: its folder cannot be made on a Windows disk."""
    from chorus_batch.commit import next_label
    from chorus_batch.times import utc_now

    write(site, "OMOP/a.csv")
    for label in ("CON", "nul", "com1", "AUX.v2", "lpt9.2026"):
        out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", label)
        assert out.returncode == 2 and "device name" in out.stderr and "Windows" in out.stderr, (label, out.stderr)
        assert not db.exists()
    for label in ("CONTROL", "console.v1", "com10", "nulls", "v-aux", "2026-con"):  # (names Windows keeps)
        assert next_label(utc_now(), None, label) == label


def test_a_hand_label_too_long_to_be_followed_is_refused_before_any_work(site, db):
    """`run --version` with 50 to 64 characters was taken; the next night's default label, '<label>-<UTC start>', then
    had 65 or more, past what a label may have (mark-uploaded refused to name it). Refused up front; a manifest whose
    latest label is already that long is told, before the listing, to give the next run a label."""
    write(site, "OMOP/a.csv")
    long = "v" + "x" * 49
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", long)
    assert out.returncode == 2 and "has 50 characters" in out.stderr and "at most 49" in out.stderr, out.stderr
    assert "listing" not in out.stderr and not db.exists()
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", long[:49]).returncode == 0
    import sqlite3

    with sqlite3.connect(db) as con:  # as an older release let it be given
        con.execute("UPDATE versions SET label = ?", (long,))
    con.close()
    write(site, "OMOP/b.csv")
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db))
    assert out.returncode == 2 and f"the latest version's label '{long}' has 50 characters" in out.stderr, out.stderr
    assert "listing" not in out.stderr and "--version" in out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


def test_findings_exit_1_and_json_summary(site, db):
    write(site, "stray.txt")
    out = main_here("run", "--site", str(site), "--db", str(db), "--json", "-q")
    assert out.returncode == 1
    summary = json.loads(out.stdout)
    assert summary["errors"]["by_kind"] == {"unparseable": 1}
    assert summary["by_modality"]["Other"]["added"] == 1


def test_batch_log_lines_when_not_a_terminal(site, db):
    write(site, "OMOP/a.csv")
    out = main_here("run", "--site", str(site), "--db", str(db))
    assert "chorus-batch: listing" in out.stderr
    assert "committing version" in out.stderr


def test_testdata_is_deterministic_for_a_seed(tmp_path):
    for name in ("a", "b"):
        out = main_here("testdata", str(tmp_path / name), "--persons", "4", "--files-per-person", "10", "--seed", "9")
        assert out.returncode == 0, out.stderr
    assert tree_md5(tmp_path / "a") == tree_md5(tmp_path / "b")
    assert tree_md5(tmp_path / "a" / "first") != tree_md5(tmp_path / "a" / "second")


@pytest.mark.parametrize("command", [("files",), ("versions",), ("changes",), ("history", "OMOP/a.csv"),
                                     ("diff", "--from", "1"), ("status", "--no-validate")])
def test_a_failing_command_with_json_prints_its_error_as_json_on_stdout(site, tmp_path, command):
    # A script parsing stdout got nothing: it now gets why, where, the fix and the exit code (stderr as before)
    # status: a mistyped site; the others: a --db that names no manifest
    site_args = ("--site", str(tmp_path / "no-such-site")) if command[0] == "status" else ()
    out = cli(*command, "--db", str(tmp_path / "nothing-here.sqlite"), *site_args, "--json")
    d = json.loads(out.stdout)
    assert out.returncode == d["exit_code"] != 0, (out.returncode, out.stdout, out.stderr)
    assert d["error"] and d["error"] in out.stderr and "fix" in d, d
    assert main_here("files", "--db", str(tmp_path / "nothing-here.sqlite")).stdout == ""  # without --json: stderr only


@pytest.mark.parametrize("argv", [("versions", "--json", "--bogus"), ("files", "--json", "--as-of"),
                                  ("diff", "--json"), ("versoins", "--json")])
def test_a_usage_error_with_json_prints_it_as_json_on_stdout(tmp_path, argv):
    # argparse's refusals (an unknown flag, a missing value or argument, a mistyped command) printed nothing on
    # stdout under --json, while every other failing command prints its error there as one JSON object
    out = cli(*argv, cwd=tmp_path)
    d = json.loads(out.stdout)
    assert out.returncode == d["exit_code"] == 2, (out.returncode, out.stdout, out.stderr)
    assert d["error"] and d["error"] in out.stderr and "--help" in d["fix"], d
    # every field the README names is there, null where nothing is said (a script reading `outcome` got a KeyError)
    assert list(d) == ["error", "where", "fix", "outcome", "exit_code"] and d["outcome"] is None, d
    assert "usage:" in out.stderr and "Traceback" not in out.stderr
    assert cli(*[word for word in argv if word != "--json"], cwd=tmp_path).stdout == ""  # without --json: stderr only
    assert cli("history", "--", "--json", cwd=tmp_path).stdout == ""  # a name after '--' is no flag


def test_a_file_that_is_not_a_manifest_is_refused_untouched(site, tmp_path):
    write(site, "OMOP/a.csv")
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("these are my notes, not a database\n")
    out = main_here("run", "--site", str(site), "--db", str(bogus))
    assert out.returncode == 3
    assert "not a readable SQLite database" in out.stderr and "fix:" in out.stderr and "Traceback" not in out.stderr
    assert bogus.read_text() == "these are my notes, not a database\n"


def test_a_damaged_manifest_is_said_to_be_damaged_and_not_to_be_started_anew(site, db):
    """A manifest cut short (a copy that stopped, a disk that lost writes) was "not a readable SQLite database", fix
    "move this one aside to start a new manifest": its versions and uploads ledger lost for advice. It says the
    manifest is damaged, and to restore it from a backup or the copy `upload` left at the centre."""
    write(site, "OMOP/a.csv")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    cut = db.read_bytes()[:3000]
    db.write_bytes(cut)
    for command in (("versions",), ("run", "--site", str(site))):
        out = cli(*command, "--db", str(db))
        assert out.returncode == 3 and "Traceback" not in out.stderr, (command, out.stderr)
        assert "is damaged" in out.stderr and "backup" in out.stderr and "_manifest/manifest.sqlite" in out.stderr
        assert "move this one aside" not in out.stderr, out.stderr
        # what it holds is damaged: not "the manifest holds what it held before" of it
        assert "holds what it held before" not in out.stderr and "nothing was written to it" in out.stderr, out.stderr
    assert db.read_bytes() == cut


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 command-line shell")
def test_the_salvage_a_damaged_manifest_is_told_works_with_the_sqlite3_shell(site, db):
    """The advice for a damaged database was `sqlite3 DB .recover`, which writes no table with the sqlite3 3.40 of
    Debian bookworm ("SQL logic error"): the command the message gives, run as given, copies out what is readable."""
    write(site, "OMOP/a.csv")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    (label,), = query(db, "SELECT label FROM versions")
    with open(db, "r+b") as f:  # pages overwritten mid-file, as a bad disk leaves them
        f.seek(4096 * 2)
        f.write(b"\xff" * 8192)
    out = main_here("versions", "--db", str(db))
    assert out.returncode == 3 and "is damaged" in out.stderr, out.stderr
    command = out.stderr.split("copy out what is still readable (rows on damaged pages are lost): ")[1].splitlines()[0]
    salvaged = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    assert salvaged.returncode == 0, salvaged.stderr
    assert query(Path(f"{db}.salvaged"), "SELECT label FROM versions") == [(label,)]


def test_a_manifest_from_a_newer_version_is_refused(site, db):
    import sqlite3

    write(site, "OMOP/a.csv")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    out = main_here("run", "--site", str(site), "--db", str(db))
    assert out.returncode == 3 and "schema version 99" in out.stderr and "upgrade" in out.stderr


def test_the_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[0]
    commands = [line.strip() for line in readme.splitlines() if line.startswith("    ")]
    assert len(commands) == 2
    # `chorus-batch`, as the commands `run --demo` prints: `python -m chorus_batch` run in the checkout imports the
    # source beside it, whose demo site (data/demo_site) is not the installed package's, a second root of the demo
    assert "pip install ." in commands[0] and commands[0].endswith("&& chorus-batch run --demo")
    assert commands[1] == "scripts/test"
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert (ROOT / "scripts" / "test").stat().st_mode & 0o111  # executable


@pytest.mark.parametrize("command", ["run", "status", "validate", "registry", "upload", "verify", "testdata"])
def test_a_number_of_workers_out_of_range_is_a_usage_error(tmp_path, command):
    for many in ("257", "99999999999"):  # (the latter was told "at most 2,147,483,647": not this option's limit)
        out = cli(command, "--workers", many, cwd=tmp_path)
        assert out.returncode == 2 and "--workers: must be at most 256" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "ValidationError" not in out.stderr


def test_site_on_the_command_line_says_the_configs_modality_roots_still_apply(tmp_path):
    """--site replaced [site] root, and [site.roots] of ./chorus.toml were listed with it, unsaid: a folder given by
    hand was run together with another site's Waveforms root."""
    write(tmp_path / "a", "OMOP/a.csv")
    write(tmp_path / "b", "OMOP/b.csv")
    write(tmp_path / "bedside", "000001/Waveforms/x.hea")
    (tmp_path / "chorus.toml").write_text("[site]\nroot = 'a'\n[site.roots]\nWaveforms = 'bedside'\n")
    note = f"--site replaces [site] root of the config; its [site.roots] still apply (Waveforms: {tmp_path / 'bedside'})"
    out = cli("status", "--site", "b", "--db", "m.sqlite", "--json", cwd=tmp_path)
    assert out.returncode in (0, 1) and note in out.stderr, out.stderr
    assert sorted(c["srcfile"] for c in json.loads(out.stdout)["changes"]) == ["000001/Waveforms/x.hea", "OMOP/b.csv"]
    out = cli("status", "--site", "a", "--db", "m.sqlite", "--json", cwd=tmp_path)  # the config's own root: no note
    assert out.returncode in (0, 1) and "still apply" not in out.stderr, out.stderr


def test_a_missing_modality_root_is_named_where_it_was_given(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "chorus.toml").write_text("[site]\nroot = 'site'\n[site.roots]\nWaveforms = 'nowhere'\n")
    out = cli("run", "--db", str(tmp_path / "m.sqlite"), cwd=tmp_path)
    assert out.returncode == 2 and "where: chorus.toml, line 4: [site.roots] Waveforms" in out.stderr, out.stderr
    assert "nowhere" in out.stderr and "fix:   point [site.roots] Waveforms at" in out.stderr


def test_unlock_of_a_path_that_names_no_manifest_is_a_usage_error(site, db, tmp_path):
    """`unlock --db az:/c/m.sqlite` (a slash short: a local path) said "is a local manifest ... Nothing to unlock",
    exit 0, and the lease in Azure stayed; so for every --db that names no manifest. A local manifest: exit 0."""
    for wrong in ("az:/chorus/site/manifest.sqlite", str(tmp_path / "none.sqlite"), str(tmp_path)):
        out = cli("unlock", "--db", wrong, "--yes", cwd=tmp_path)
        assert out.returncode == 2 and "fix:" in out.stderr and "az://" in out.stderr, (wrong, out.stderr)
        assert "Nothing to unlock" not in out.stdout, wrong
    assert not (tmp_path / "az:").exists()
    write(site, "OMOP/a.csv")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    local = main_here("unlock", "--db", str(db), "--yes")
    assert local.returncode == 0 and "released by the OS" in local.stdout, local.stderr
    assert "held now" not in local.stdout, local.stdout


def test_unlock_of_a_local_manifest_a_run_holds_names_that_run(site, db, tmp_path):
    """`unlock` of a local manifest while a run holds it said only "Nothing to unlock", as of a free one: it names the
    run holding it and how to end it (the lock file's removal does not)."""
    write(site, "OMOP/a.csv")
    proc = paused("run", "--no-validate", "--site", str(site), "--db", str(db), at="run-finished", cwd=tmp_path)
    try:
        out = cli("unlock", "--db", str(db), "--yes", cwd=tmp_path)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"held now for runs and upgrades by pid {proc.pid} " in out.stdout and "`chorus-batch run`" in out.stdout, out.stdout
    assert "kill PID" in out.stdout and "Traceback" not in out.stderr, out.stdout


def test_the_same_mistake_gets_the_same_exit_code_in_every_command(site, db, tmp_path):
    write(site, "OMOP/a.csv")
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    folder, missing = tmp_path / "folder", tmp_path / "none.sqlite"
    folder.mkdir()
    commands = [("versions",), ("changes",), ("upgrade",), ("validate",), ("registry", "--out", str(tmp_path / "r")),
                ("run", "--site", str(site)), ("status", "--site", str(site))]
    for wrong in (folder, missing):  # a --db that names no manifest is a usage error (2), whichever command
        for command in commands:
            if wrong == missing and command[0] in ("run", "status"):
                continue  # (they start a new manifest there)
            out = cli(*command, "--db", str(wrong))
            assert out.returncode == 2 and "fix:" in out.stderr, (command, wrong, out.stderr)
        for command in (("upload",), ("verify",), ("mark-uploaded", "--from-log", "log.txt")):
            # said before the central container they also lack (it named only that: fixing it led to this)
            out = cli(*command, "--db", str(wrong), cwd=tmp_path)
            assert out.returncode == 2 and f"where: {wrong}" in out.stderr, (command, wrong, out.stderr)
    for command in (("files",), ("diff", "--from", "x"), ("history", "a")):  # (a folder: Parquet snapshots)
        out = cli(*command, "--db", str(missing))
        assert out.returncode == 2 and "no manifest at" in out.stderr, (command, out.stderr)
    for command in (("changes",), ("files", "--as-of"), ("report", "--out", str(tmp_path / "r.html")),
                    ("registry", "--out", str(tmp_path / "r"))):  # so is a --version that names no version
        flag = [] if command[-1] == "--as-of" else ["--version"]
        out = cli(*command, *flag, "nope", "--db", str(db))
        assert out.returncode == 2 and "fix:" in out.stderr, (command, out.stderr)


def test_files_and_the_other_readers_say_no_manifest_with_the_same_fix(tmp_path):
    """`files --db none.sqlite` (and history, diff, report: they read through open_manifest) said "pass the manifest
    file written by `chorus-batch run` (--db), or its --parquet folder", where versions, changes and registry say
    "pass --db with the manifest's path; or start one there: `chorus-batch run --site DIR --db ...`". Now one fix."""
    from chorus_batch.errors import UsageError
    from chorus_batch.review import open_manifest

    missing = tmp_path / "none.sqlite"
    start = f"start one there: `chorus-batch run --site DIR --db {missing}`"
    for command in (("versions",), ("files",), ("history", "a"), ("diff", "--from", "x"),
                    ("report", "--out", str(tmp_path / "r.html"))):
        out = cli(*command, "--db", str(missing))
        assert out.returncode == 2 and f"no manifest at {missing}" in out.stderr, (command, out.stderr)
        assert "fix:   pass --db with the manifest's path" in out.stderr and start in out.stderr, (command, out.stderr)
    with pytest.raises(UsageError) as caught:  # the library: its own call, as Manifest() says it
        open_manifest(str(missing))
    assert "give Manifest() or open_manifest() the manifest's path" in caught.value.fix
    assert f"chorus_batch.run(RunSettings(site=DIR, db={str(missing)!r}))" in caught.value.fix, caught.value.fix


def test_every_spelling_of_a_local_root_records_the_same_rows(tmp_path):
    """A root folder named with spaces, '#', '%', '?' and accents, given as a relative or absolute path (with
    trailing slashes), under '~', through a symlink, and as a file URL (%-escaped as Path.as_uri() writes it, with
    localhost, as file:/): the manifests hold the same files and site. A file URL's escapes were kept ("not a
    readable directory"), file://localhost/p was a folder under the working directory, and '~' was not read."""
    home = tmp_path / "home"
    root = home / "sites" / "St. Mary #2 100%20 é?"
    write(root, "OMOP/person.csv", b"person_id\n1\n")
    write(root, "Metadata/READINESS.md", b"# ready\n")
    (tmp_path / "link").symlink_to(root)
    forms = ["home/sites/St. Mary #2 100%20 é?", f"{root}//", "~/sites/St. Mary #2 100%20 é?", str(tmp_path / "link"),
             root.as_uri(), root.as_uri().replace("file://", "file://localhost") + "/", "file:" + root.as_uri()[len("file://"):]]
    recorded = []
    for i, form in enumerate(forms):
        db = tmp_path / f"m{i}.sqlite"
        out = cli("run", "-q", "--no-validate", "--site", form, "--db", str(db), cwd=tmp_path, env={"HOME": str(home)})
        assert out.returncode == 0, (form, out.stderr)
        recorded.append((query(db, "SELECT srcfile, size, md5 FROM source_files ORDER BY srcfile"),
                         query(db, "SELECT site FROM versions")))
    assert [(path, size) for path, size, _ in recorded[0][0]] == [("Metadata/READINESS.md", 8), ("OMOP/person.csv", 12)]
    assert all(r == recorded[0] for r in recorded), recorded
    assert recorded[0][1] == [(root.resolve().as_posix(),)]
    # '%20' in the folder's own name: a URL of its letters decodes to another folder, which does not exist
    out = cli("run", "--site", "file://" + str(root), "--db", str(tmp_path / "x.sqlite"), cwd=tmp_path)
    assert out.returncode == 2 and "its %-escapes decoded" in out.stderr and "write each '%'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "x.sqlite").exists()


@pytest.mark.parametrize("argv", [["status", "--site", "SITE"], ["files"], ["versions"], ["changes"], ["history", "a.csv"],
                                  ["report", "--out", "r.html"], ["validate"], ["registry", "--out", "reg"],
                                  ["verify", "--to", "az://cnt/"], ["upload", "--to", "az://cnt/"]])
def test_an_empty_db_file_is_said_to_be_no_manifest_and_left_empty_by_every_reading_command(tmp_path, argv):
    """`validate` and `registry` took the lock and wrote a whole manifest's tables into the user's 0-byte file (then
    said 'no versions yet'); the others called it 'the manifest ... is empty'. Now: exit 2, the file left at 0 bytes."""
    site = tmp_path / "site"
    (site / "OMOP").mkdir(parents=True)
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n")
    db = tmp_path / "empty.sqlite"
    db.touch()
    out = cli(*[str(site) if word == "SITE" else word for word in argv], "--db", str(db), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "empty file (0 bytes), not a manifest" in out.stderr and "fix:" in out.stderr, out.stderr
    assert db.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite", "site"]


def test_run_starts_a_new_manifest_in_an_empty_db_file(tmp_path):
    """As the README says (exit code 2's row): `run` takes an empty file as it takes a path where nothing is."""
    site = tmp_path / "site"
    (site / "OMOP").mkdir(parents=True)
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n")
    db = tmp_path / "empty.sqlite"
    db.touch()
    out = cli("run", "--site", str(site), "--db", str(db), "-q", "--no-validate", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert main_here("versions", "--db", str(db)).returncode == 0


def _readme_exit_codes() -> set[int]:
    text = (ROOT / "README.md").read_text()
    table = text.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    codes: set[int] = set()
    for row in table.splitlines()[2:]:  # after the header and its rule
        cell = row.split("|")[1]
        codes |= {int(code) for code in cell.replace(" ", "").split(",")}
    return codes


def test_the_readmes_exit_code_table_and_the_codes_the_command_line_uses_agree_both_ways():
    """Every code the code can exit with is a row of the README's table (and of --help's list), and every row is a
    code the code uses: ExitCode's members, and the numbers cli.py's commands return themselves."""
    import ast
    import re

    from chorus_batch.errors import EXIT_CODES_HELP, ExitCode

    documented = _readme_exit_codes()
    members = {int(code) for code in ExitCode}
    tree = ast.parse((ROOT / "chorus_batch" / "cli.py").read_text())
    literal = {node.value.value for node in ast.walk(tree) if isinstance(node, ast.Return)
               and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)
               and not isinstance(node.value.value, bool)}
    # ExitCode.NAME in every module names a member (an AttributeError otherwise only when that line runs)
    named = set()
    for path in (ROOT / "chorus_batch").rglob("*.py"):
        named |= set(re.findall(r"ExitCode\.([A-Z_]+)", path.read_text()))
    assert named <= set(ExitCode.__members__), named - set(ExitCode.__members__)
    used = members | literal
    assert used <= documented, f"exit codes used but not in the README's table: {sorted(used - documented)}"
    assert documented <= used, f"README rows no code exits with: {sorted(documented - used)}"
    in_help = {int(code) for code in re.findall(r"^\s+(\d+)\s", EXIT_CODES_HELP.split("\n", 1)[1], re.M)}
    in_help |= {int(code) for code in re.findall(r"; (\d+) \w", EXIT_CODES_HELP)}
    assert in_help == documented, (sorted(in_help), sorted(documented))


def test_an_empty_config_file_is_warned_of(tmp_path):
    """`import-config CONFIG > chorus.toml` that fails leaves ./chorus.toml empty (the shell empties it first): the
    next run took every default without a word (another manifest, another max_delete)."""
    (tmp_path / "site").mkdir()
    for text in ("", "# converted by hand\n\n"):
        (tmp_path / "chorus.toml").write_text(text, encoding="utf-8")
        out = cli("status", "--site", "site", "--no-validate", cwd=tmp_path)
        assert "the config file chorus.toml holds no settings (it is empty, or holds only comments)" in out.stderr, (
            text, out.stderr)
    (tmp_path / "chorus.toml").write_text("[run]\nworkers = 2\n", encoding="utf-8")
    assert "holds no settings" not in cli("status", "--site", "site", "--no-validate", cwd=tmp_path).stderr


@pytest.mark.parametrize("key", ["aws_secret_access_key", "password", "secret", "session_token", "client_secret"])
def test_a_secret_refused_in_the_config_is_named_whole_and_never_shown(tmp_path, key):
    """`[s3] aws_secret_access_key = "..."` was said as "refused setting 's3.aws_secret_access_key': *** secret does
    not belong in a config file": the masking of log lines read the message's own `key': a` as a secret's value."""
    (tmp_path / "site").mkdir()
    (tmp_path / "c.toml").write_text(f'[s3]\n{key} = "TOPSECRETVALUE"\n', encoding="utf-8")
    out = cli("status", "--config", "c.toml", "--site", "site", "--no-validate", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"refused setting 's3.{key}' (its value is not shown): a secret does not belong in a config file" in (
        out.stderr), out.stderr
    assert "***" not in out.stderr and "TOPSECRETVALUE" not in out.stderr + out.stdout


@pytest.mark.parametrize("section, key, variable", [
    ("[central]\n", "sas_token", "sas_token_env"), ("[central]\n", "account_key", "account_key_env"),
    ("[manifest]\n", "connection_string", "connection_string_env"), ("", "sas_token", "sas_token_env"),
    ("[azure]\n", "storage_account_key", "account_key_env"), ("[site]\n", "password", None),
    ("[s3]\n", "key", "AWS_SECRET_ACCESS_KEY")])
def test_a_secret_named_setting_is_refused_in_every_section(tmp_path, section, key, variable):
    """`[central] sas_token = "..."` was "unknown setting 'central.sas_token'; fix: remove it", and
    `[azure] storage_account_key` "did you mean 'azure.account_key_env'?" (where the key itself then went): a setting
    named as a secret is refused as one wherever it is written, with the environment variable to use instead."""
    (tmp_path / "c.toml").write_text(f'{section}{key} = "TOPSECRETVALUE"\n', encoding="utf-8")
    out = cli("versions", "--config", "c.toml", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "a secret does not belong in a config file" in out.stderr and "environment" in out.stderr, out.stderr
    assert "unknown setting" not in out.stderr and "did you mean" not in out.stderr, out.stderr
    assert variable is None or variable in out.stderr, out.stderr
    assert "in [s3]" not in out.stderr  # ([s3] names no variable: "account_key_env = ... in [s3]" was said)
    assert "TOPSECRETVALUE" not in out.stderr + out.stdout


@pytest.mark.parametrize("name", ["sv=2021-08-06&ss=b&srt=sco&sp=rwl&sig=TOPSECRETVALUE%3D",
                                  "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=TOPSECRETVALUE==",
                                  "https://user:TOPSECRETVALUE@mgh.example.org"])
def test_a_secret_written_as_the_site_name_is_refused_not_recorded(tmp_path, name):
    """A SAS token pasted as `[site] name` was taken: recorded in every version's row and shown in each report."""
    write(tmp_path / "site", "OMOP/person.csv")
    (tmp_path / "chorus.toml").write_text(f'[site]\nroot = "site"\nname = "{name}"\n', encoding="utf-8")
    out = cli("run", "--no-validate", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "invalid setting 'site.name': looks like a secret" in out.stderr, out.stderr
    assert "TOPSECRETVALUE" not in out.stderr + out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chorus.toml", "site"]  # no manifest started
    from chorus_batch.config import RunSettings
    from chorus_batch.errors import SettingError

    with pytest.raises(SettingError, match="looks like a secret") as raised:
        RunSettings(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), site_name=name)
    assert "TOPSECRETVALUE" not in str(raised.value)


def test_white_space_around_the_site_name_is_left_out_of_what_is_recorded(tmp_path):
    """`[site] name = " Site A "` was recorded so in every version's row (and shown padded): another site than
    "Site A" to whatever compares the names. The name is recorded without it; so is RunSettings(site_name=...)."""
    write(tmp_path / "site", "OMOP/person.csv")
    (tmp_path / "chorus.toml").write_text('[site]\nroot = "site"\nname = " Site A\u00a0"\n', encoding="utf-8")
    out = cli("run", "--no-validate", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert query(tmp_path / "chorus_manifest.sqlite", "SELECT site FROM versions") == [("Site A",)]
    from chorus_batch.config import RunSettings

    assert RunSettings(site=str(tmp_path / "site"), db=str(tmp_path / "m.sqlite"), site_name=" Site A ").site_name \
        == "Site A"


def test_status_says_which_setting_turned_validation_off(tmp_path):
    """`[run] validate = false` in chorus.toml: `status` said "validation: not checked (--no-validate)", a flag never
    given, and not where validation was turned off."""
    write(tmp_path / "site", "OMOP/person.csv")
    (tmp_path / "chorus.toml").write_text('[site]\nroot = "site"\n[run]\nvalidate = false\n', encoding="utf-8")
    out = cli("status", cwd=tmp_path)
    assert "validation: not checked ([run] validate = false in chorus.toml; --validate checks it)" in out.stdout, (
        out.stdout, out.stderr)
    out = cli("status", "--no-validate", cwd=tmp_path)
    assert "validation: not checked (--no-validate)" in out.stdout, out.stdout


def test_verbose_says_the_config_read_and_where_each_setting_came_from(tmp_path):
    """Under -v nothing said which chorus.toml a run read, nor whether --workers or [run] workers won."""
    write(tmp_path / "site", "OMOP/person.csv")
    (tmp_path / "chorus.toml").write_text('[site]\nroot = "site"\n[run]\nworkers = 2\nmax_delete = "10%"\n'
                                         'validate = false\n', encoding="utf-8")
    out = cli("status", "-v", "--workers", "3", "--validate", cwd=tmp_path)
    line = next((line for line in out.stderr.splitlines() if "settings: " in line), "")
    assert "settings: config chorus.toml; site " in line, out.stderr
    for said in ("workers 3 (--workers)", "max_delete 10% ([run] max_delete)", "validate true (--validate)",
                 "mode full (default)", "follow_symlinks false (default)"):
        assert said in line, (said, line)
    assert "settings: " not in cli("status", cwd=tmp_path).stderr  # (only under -v)
    # the exclusion globs too (they add up: [run] exclude and --exclude); they were the one setting said unsourced
    with open(tmp_path / "chorus.toml", "a", encoding="utf-8") as f:
        f.write('exclude = ["*.tmp"]\n')
    for flags, said in (((), "exclude *.tmp ([run] exclude)"),
                        (("--exclude", "scratch/*"), "exclude *.tmp, scratch/* ([run] exclude and --exclude)")):
        out = cli("status", "-v", *flags, cwd=tmp_path)
        line = next((line for line in out.stderr.splitlines() if "settings: " in line), "")
        assert line.endswith(said), (said, line)


def test_a_quoted_tilde_in_any_output_path_is_the_home_folder(tmp_path):
    """A cron line or unit file passes '~' unexpanded. --db and registry --out read it as the home folder; report and
    review --out said "its folder ~ does not exist", and import-config --out and testdata OUT made a folder named
    '~' in the working folder."""
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    env = {"HOME": str(home)}
    assert cli("testdata", "-q", "--persons", "1", "~/td", cwd=here, env=env).returncode == 0
    site, db = home / "td" / "first", "~/m.sqlite"
    assert cli("run", "-q", "--site", str(site), "--db", db, "--no-validate", cwd=here, env=env).returncode == 0
    (tmp_path / "up.toml").write_text('[site_path]\ndefault = "/data/site"\n', encoding="utf-8")
    for args in (("report", "--db", db, "--out", "~/r.html"), ("registry", "--db", db, "--out", "~/reg"),
                 ("import-config", str(tmp_path / "up.toml"), "--out", "~/c.toml")):
        out = cli(*args, cwd=here, env=env)
        assert out.returncode in (0, 1), out.stderr
    assert {"c.toml", "m.sqlite", "r.html", "reg", "td"} <= {p.name for p in home.iterdir()}
    assert list(here.iterdir()) == []  # no folder named '~'


# Python on Windows has none of these modules and none of these signals: the command line is started with them
# taken away (the lock library, imported first, keeps what it needs: on Windows it locks with LockFileEx).
_WITHOUT_POSIX = """\
import importlib.abc, runpy, signal, sys
import filelock
POSIX_ONLY = {"fcntl", "resource", "pwd", "grp", "termios"}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in POSIX_ONLY:
            raise ImportError(f"No module named {name!r}")
for name in POSIX_ONLY:
    sys.modules.pop(name, None)
sys.meta_path.insert(0, Refuse())
for name in ("SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGXFSZ", "SIGKILL", "SIGALRM", "SIGCHLD",
             "SIGPIPE", "SIGSTOP", "SIGTSTP", "SIGCONT", "pthread_sigmask", "SIG_BLOCK", "SIG_SETMASK", "alarm",
             "setitimer", "siginterrupt", "pthread_kill", "sigwait", "pause"):
    if hasattr(signal, name):
        delattr(signal, name)
sys.argv[0] = "chorus-batch"
runpy.run_module("chorus_batch", run_name="__main__", alter_sys=True)
"""


def test_every_command_runs_without_the_posix_only_modules_and_signals(tmp_path):
    """Two sites run chorus-batch on Windows: no fcntl, resource, pwd, grp or termios, no SIGHUP, SIGQUIT, SIGUSR1/2,
    SIGXCPU or SIGKILL. Each is imported or named only where it exists; a run, a second run, and the commands that
    read the manifest work without them."""
    from chorus_batch.testdata import Spec, write_snapshot

    write_snapshot(tmp_path / "first", Spec(persons=3, files_per_person=6, seed=2))
    db = str(tmp_path / "m.sqlite")

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _WITHOUT_POSIX, *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    assert command("--help").returncode == 0
    for args in (("run", "--site", str(tmp_path / "first"), "--db", db, "--workers", "2"),
                 ("run", "--site", str(tmp_path / "first"), "--db", db, "--rehash"),
                 ("versions", "--db", db), ("files", "--db", db, "--md5sum"), ("validate", "--db", db),
                 ("report", "--db", db, "--out", str(tmp_path / "r.html"))):
        done = command(*args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stdout + done.stderr)
    assert command("files", "--db", db, "--md5sum").stdout == cli("files", "--db", db, "--md5sum").stdout


@pytest.mark.parametrize("path, shown", [
    ("C:\\sites\\a\\m.sqlite", "C:\\sites\\a\\m.sqlite"),  # bare: cmd.exe and PowerShell both take it
    ("C:\\my sites\\m.sqlite", '"C:\\my sites\\m.sqlite"'),  # double quotes: both take them
    ("C:\\$site\\m.sqlite", "'C:\\$site\\m.sqlite'"),  # PowerShell would expand $site within double quotes
    ("\\\\server\\share\\O'Hara's m.sqlite", '"\\\\server\\share\\O\'Hara\'s m.sqlite"'),
])
def test_a_command_a_message_suggests_on_windows_quotes_its_path_as_windows_shells_read_it(monkeypatch, path, shown):
    """Messages suggest chorus-batch commands to copy (`chorus-batch run --site DIR --db ...`, `upgrade --db ...`).
    Their words were shlex.quote'd: on Windows every path went in single quotes ('C:\\sites\\m.sqlite'), which
    cmd.exe passes on as part of the path, and the copied command said the manifest was not there."""
    from chorus_batch import errors

    monkeypatch.setattr(errors, "_command_line", True)
    with monkeypatch.context() as windows:  # (only around the call: pytest itself reads os.name)
        windows.setattr(os, "name", "nt")
        said = errors.first_run_command(path)
    assert said == f"`chorus-batch run --site DIR --db {shown}`"
    from chorus_batch.units import command_word

    assert os.name == "posix" and command_word("/data/my site/m.sqlite") == "'/data/my site/m.sqlite'"  # POSIX shells: as before


def test_a_file_url_with_a_drive_letter_names_that_drive_on_windows(monkeypatch):
    """Windows' Path.as_uri() is file:///C:/data/my%20site (RFC 8089): its path was taken as /C:/data/my site, which
    Windows reads as C:\\C:\\data\\my site ("not a readable directory"). With Windows' own drive rules (ntpath), the
    URL names C:/data/my site; elsewhere a folder named 'C:' under / is what it names, as before."""
    import ntpath
    import os

    from chorus_batch.urls import local_path

    assert local_path("file:///C:/data/my%20site") == "/C:/data/my site"  # (POSIX: a folder named 'C:')
    monkeypatch.setattr(os.path, "splitdrive", ntpath.splitdrive)
    assert local_path("file:///C:/data/my%20site") == "C:/data/my site"
    assert local_path("file:///c:/") == "c:/"
    assert local_path("file:///data/site") == "/data/site"


def test_a_file_url_naming_a_server_is_its_network_share_on_windows(tmp_path):
    """Windows' Path.as_uri() of a share (\\\\server\\share\\my site) is file://server/share/my%20site (RFC 8089). On
    Windows it was refused ("naming the computer 'server' is not read", fix: "where it is mounted here"), though it
    is how Windows names that very share; now it is //server/share/my site there. Elsewhere it is still refused, the
    share being reached where it is mounted; a URL naming a server but no share is refused on Windows too."""
    from chorus_batch.errors import UsageError
    from chorus_batch.urls import local_path

    assert local_path("file://server/share/chorus/my%20site", windows=True) == "//server/share/chorus/my site"
    assert local_path("FILE://fs01.hospital.org/CHoRUS", windows=True) == "//fs01.hospital.org/CHoRUS"
    assert local_path("file://localhost/data/site", windows=True) == "/data/site"  # this computer, as before
    with pytest.raises(UsageError, match="no shared folder on it"):
        local_path("file://server/", windows=True)
    with pytest.raises(UsageError, match="naming the computer 'server' is not read"):
        local_path("file://server/share/site", windows=False)
    with pytest.raises(UsageError, match="user or password"):  # never read, on Windows neither
        local_path("file://me:pw@server/share/site", windows=True)
    # from the command line, on this (POSIX) machine: refused, exit 2, nothing made
    out = cli("run", "--site", "file://server/share/site", "--db", str(tmp_path / "m.sqlite"), cwd=tmp_path)
    assert out.returncode == 2 and "mounted here" in out.stderr and not (tmp_path / "m.sqlite").exists(), out.stderr


def test_a_manifest_name_with_white_space_at_an_end_is_refused_unless_that_file_is_there(site, tmp_path):
    """`--db "$DB"` with DB read from a file saved with Windows line ends ("m.sqlite\r"), or `db = "m.sqlite "`:
    `run` started a second, empty manifest beside the site's under that name (its summary's "committed to
    .../m.sqlite " showed no difference) and recorded every file as added again."""
    write(site, "OMOP/a.csv", b"a")
    db = tmp_path / "m.sqlite"
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    for name in ("m.sqlite ", "m.sqlite\r", " m.sqlite"):
        out = main_here("run", "--no-validate", "--site", str(site), "--db", str(tmp_path / name), "-q")
        assert out.returncode == 2, (name, out.stderr)
        assert f"--db {str(tmp_path / name)!r}: the manifest's file name" in out.stderr, out.stderr
        assert f"({db} is there)" in out.stderr and f"write the name without it: {str(db)!r}" in out.stderr
    said = main_here("versions", "--db", f"{db}\r")
    assert said.returncode == 2 and "Windows line ends" in said.stderr and "dos2unix" in said.stderr, said.stderr
    (tmp_path / "c.toml").write_text(f'[site]\nroot = "{site}"\n[manifest]\ndb = "m.sqlite "\n')
    out = main_here("status", "--config", str(tmp_path / "c.toml"), "-q")
    assert out.returncode == 2 and "[manifest] db" in out.stderr and "ends with white space" in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.toml", "site", "m.sqlite", "m.sqlite.lock",
                                                                 "m.sqlite.state.parquet"]), list(tmp_path.iterdir())
    # a manifest that is there under such a name is the one meant
    shutil.copy(db, tmp_path / "odd ")
    assert main_here("versions", "--db", str(tmp_path / "odd ")).returncode == 0
    # a snapshot folder alike: `--parquet "$SNAPS"` made a second folder 'snapshots\r' beside the site's
    (tmp_path / "snapshots").mkdir()
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", f"{tmp_path / 'snapshots'}\r")
    assert out.returncode == 2, out.stderr
    assert ("the snapshot folder's name ends with white space (a carriage return, as a file saved with Windows line "
            f"ends leaves), and nothing of that name is there ({tmp_path / 'snapshots'} is there)") in out.stderr, \
        out.stderr
    assert not (tmp_path / "snapshots\r").exists() and query(db, "SELECT count(*) FROM versions") == [(1,)]
    # and a shards' staging folder: the shards wrote under 'staging\r', where the merge of 'staging' found none
    (tmp_path / "staging").mkdir()
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--shard", "0/2",
              "--staging", f"{tmp_path / 'staging'}\r")
    assert out.returncode == 2 and "the staging folder's name ends with white space" in out.stderr, out.stderr
    assert not (tmp_path / "staging\r").exists()
    # every path argument of the machine's: a report written as 'r.html\r', a config "not found" while it is there
    out = main_here("report", "--db", str(db), "--out", f"{tmp_path / 'r.html'}\r")
    assert out.returncode == 2 and "--out" in out.stderr and "dos2unix" in out.stderr, out.stderr
    assert not (tmp_path / "r.html\r").exists()
    (tmp_path / "c.toml").write_text(f'[site]\nroot = "{site}"\n')
    out = main_here("status", "--config", f"{tmp_path / 'c.toml'}\r", "-q")
    assert out.returncode == 2 and f"({tmp_path / 'c.toml'} is there)" in out.stderr, out.stderr


def test_a_delete_list_that_is_not_utf8_or_is_a_folder_is_said_with_its_line_not_a_codec_error(site, tmp_path):
    """A list saved in Latin-1 was "cannot read the delete list: 'utf-8' codec can't decode byte 0xe9 in position 19:
    invalid continuation byte" (a byte count, of no use in an editor), a folder "[Errno 21] Is a directory"."""
    write(site, "OMOP/a.csv", b"a")
    db = tmp_path / "m.sqlite"
    assert main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    latin1 = tmp_path / "deleted.txt"
    latin1.write_bytes(b"# removed today\nOMOP/caf\xe9.csv\n")
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--mode", "append", "--delete-list",
              str(latin1))
    assert out.returncode == 2, out.stderr
    assert (f"the delete list {latin1} is not UTF-8: byte 0xe9 on line 2" in out.stderr
            and f"where: {latin1}, line 2" in out.stderr and "codec" not in out.stderr), out.stderr
    cut = tmp_path / "cut.txt"
    cut.write_bytes("OMOP/a.csv\n".encode("utf-16")[:-1])
    out = main_here("status", "--site", str(site), "--db", str(db), "--mode", "append", "--delete-list", str(cut))
    assert out.returncode == 2 and "is UTF-16 text cut short" in out.stderr, out.stderr
    out = main_here("run", "--no-validate", "--site", str(site), "--db", str(db), "--mode", "append", "--delete-list",
              str(tmp_path))
    assert out.returncode == 2 and f"the delete list {tmp_path} is a folder, not a file" in out.stderr, out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


def test_registry_ranges_that_share_ids_are_refused_as_the_file_is_read_naming_both_lines(tmp_path):
    """`[registry]` ranges that overlap (one range copied for the other, or an image range widened into the default
    waveform one) were taken: two kinds of procedure could be given ids of one range (at first "UNIQUE constraint
    failed: registry.proc_id", exit 3; later ids after the other kind's, the ranges no longer telling the kinds
    apart). Refused as chorus.toml is read, exit 2, naming each range's line (or that it is the default), the ids
    shared and what to write; nothing is allocated. Ranges apart are taken."""
    import csv

    db = tmp_path / "m.sqlite"
    assert cli("run", "--demo", "--db", str(db), "--no-validate", "-q", cwd=tmp_path).returncode == 0
    (tmp_path / "c.toml").write_text("[registry]\nimage_proc_ids = [3000000000, 3000000100]\n"
                                     "waveform_proc_ids = [3000000000, 3000000100]\n")
    out = main_here("registry", "--db", str(db), "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out"))
    assert out.returncode == 2, out.stderr
    assert "image_proc_ids = [3000000000, 3000000100] (line 2) and waveform_proc_ids = [3000000000, 3000000100] " \
           "(line 3) share the ids 3000000000-3000000100" in out.stderr, out.stderr
    assert "c.toml, line 3" in out.stderr and "ids apart" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()
    assert query(db, "SELECT count(*) FROM registry WHERE proc_id IS NOT NULL") == [(0,)]
    # one range written, overlapping the other's default
    (tmp_path / "c.toml").write_text("[registry]\nimage_proc_ids = [2000000000, 2001000005]\n")
    out = main_here("registry", "--db", str(db), "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and "(line 2) and waveform_proc_ids = [2001000000, 2999999999] (the default: not " \
        "written in the file) share the ids 2001000000-2001000005" in out.stderr, out.stderr
    assert main_here("status", "--db", str(db), "--config", str(tmp_path / "c.toml")).returncode == 2  # (every command)
    (tmp_path / "c.toml").write_text("[registry]\nimage_proc_ids = [3000000000, 3000000100]\n"
                                     "waveform_proc_ids = [3000000101, 3000000200]\n")
    out = main_here("registry", "--db", str(db), "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    ids = {}
    for name in ("image_registry.csv", "waveform_registry.csv"):
        with open(tmp_path / "out" / name, newline="") as f:
            ids[name] = {int(row["proc_id"]) for row in csv.DictReader(f)}
    assert ids["image_registry.csv"] and all(3000000000 <= i <= 3000000100 for i in ids["image_registry.csv"]), ids
    assert ids["waveform_registry.csv"] and all(3000000101 <= i <= 3000000200 for i in ids["waveform_registry.csv"])


def test_an_exclusion_glob_with_a_run_of_backslashes_is_told_the_glob_that_matches(site, tmp_path):
    """`exclude = ["OMOP\\\\*.csv"]` in a TOML literal string (or a doubled escape) was told "write OMOP//*.csv": a glob
    with an empty folder name, taken and matching nothing."""
    write(site, "OMOP/a.csv", b"a")
    write(site, "Metadata/READINESS.md", b"r")  # (a first run whose globs leave out every file is refused, exit 5)
    out = main_here("status", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--exclude", "OMOP\\\\*.csv")
    assert out.returncode == 2, out.stderr
    assert "it holds a backslash: folders are separated by '/' on every system (write OMOP/*.csv)" in out.stderr, \
        out.stderr
    out = main_here("status", "--no-validate", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--exclude",
              "OMOP/*.csv", "--json")  # (what was said to write: it takes the file)
    assert out.returncode == 0 and json.loads(out.stdout)["excluded"]["total"] == 1, out.stdout[-500:]


def test_a_path_that_is_not_utf8_is_printed_as_its_bytes_on_both_streams(tmp_path):
    """A Latin-1 path given on the command line was printed three ways: "wrote o\\udce9.toml" on standard error,
    the raw byte on standard output ("wrote ... to t\ufffd/first" on a UTF-8 terminal), and "t\\xe9" by the site root's
    message. Every message now writes the byte as \\xe9 (a letter the stream cannot hold as \\u00e9)."""
    (tmp_path / "up.toml").write_text("[configuration]\n", encoding="utf-8")
    run = [sys.executable, "-m", "chorus_batch"]
    env = {**os.environ, "PYTHONIOENCODING": ""}
    for argv in ([*run, "import-config", "up.toml", "--out", b"o\xe9.toml"],
                 [*run, "testdata", b"t\xe9", "--persons", "1", "--files-per-person", "1"],
                 [*run, "versions", "--db", b"m\xe9.sqlite"]):
        out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, timeout=120)
        both = out.stdout + out.stderr
        assert b"\\xe9" in both and b"\\udce9" not in both and b"\xe9" not in both, (argv, both)
    out = subprocess.run([*run, "versions", "--db", "m\u00e9.sqlite"], cwd=tmp_path, capture_output=True, timeout=120,
                         env={**env, "PYTHONIOENCODING": "ascii"})
    assert b"m\\u00e9.sqlite" in out.stderr, out.stderr


def test_the_where_line_of_an_error_is_one_line_whatever_the_path_holds(tmp_path):
    """`--db $'a\\nb.sqlite'` split the error's "where:" over two lines (a log reader sees a line with no label)."""
    out = cli("versions", "--db", "a\nb.sqlite", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    where = next(line for line in out.stderr.splitlines() if line.startswith("  where: "))
    assert where.endswith("a\\nb.sqlite"), out.stderr


def test_a_site_root_named_with_a_line_break_keeps_the_error_on_its_first_line(tmp_path):
    """A root named with a line break ('r\\nx', in a refusal that names it) split the first line of the error: a log
    reader's `grep 'chorus-batch: error'` got half of it. Each part of an error is one line, the name escaped."""
    site = tmp_path / "r\nx"
    write(site, "OMOP/a.csv", b"a")
    db = tmp_path / "m.sqlite"
    assert main_here("run", "--no-validate", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    (site / "OMOP" / "a.csv").unlink()
    (site / "OMOP").rmdir()
    out = main_here("run", "--no-validate", "-q", "--site", str(site), "--db", str(db))
    assert out.returncode == 5, out.stderr
    first, *rest = out.stderr.splitlines()
    assert first.startswith("chorus-batch: error: refused: root ") and "r\\nx lists no files at all" in first, out.stderr
    assert [line[:9] for line in rest] == ["  where: ", "  fix:   ", "  nothing"], out.stderr  # (what stands)


def test_a_failure_after_the_commit_says_in_json_outcome_that_the_version_stays(site, db, tmp_path):
    """`run --json` whose Parquet snapshot failed once the version was committed (a full disk, a file where the folder
    was) printed `"outcome": null` in its error object, as of a usage error where nothing was done: a nightly script
    reading `outcome` to learn whether the night made a version was told nothing, while the version stays."""
    write(site, "OMOP/a.csv")
    snapshots = tmp_path / "snap"
    resume = tmp_path / "resume"
    run = paused("run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snapshots), "--json",
                 at="committed+60", resume=resume)
    shutil.rmtree(snapshots, ignore_errors=True)
    snapshots.write_bytes(b"a file where the snapshot folder was")
    resume.touch()
    stdout, stderr = run.communicate(timeout=60)
    d = json.loads(stdout)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert run.returncode == d["exit_code"] == 3 and "was committed" in d["error"], (stdout, stderr)
    assert d["outcome"] and f"version {label} was committed" in d["outcome"] and "stays" in d["outcome"], d
    assert "Traceback" not in stderr and "nothing was committed" not in stdout + stderr, stderr


def test_changes_json_of_many_changes_is_written_a_slice_at_a_time(tmp_path, monkeypatch):
    """`changes --json` of a version of 1M changes peaked at 3.1 GiB: a Python dict of every row and the whole text at
    once (json.dumps(frame.to_dicts())). It writes the same text JSON_SLICE_ROWS rows at a time; here, by tracemalloc,
    its Python memory is a slice's, not the version's."""
    import contextlib
    import tracemalloc

    from test_notebook import manifest_of

    from chorus_batch import cli as cli_module
    from chorus_batch.store import Manifest

    db = manifest_of(20_000, tmp_path / "m")
    first = Manifest(db).versions()["label"][0]  # 20,000 added
    expected = json.dumps(Manifest(db).changes(first)[1].to_dicts(), indent=2) + "\n"
    monkeypatch.setattr(cli_module, "JSON_SLICE_ROWS", 1_000)
    out = tmp_path / "changes.json"
    for measured in (False, True):  # (imports and first queries, outside the measure)
        with open(out, "w", encoding="utf-8") as stream, contextlib.redirect_stdout(stream):
            if measured:
                tracemalloc.start()
            try:
                assert cli_module.main(["changes", "--db", str(db), "--version", first, "--json"]) == 0
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    assert out.read_text(encoding="utf-8") == expected  # the same text, byte for byte
    # whole: ~30 MB of dicts and text; a slice of 1,000 rows: ~2 MB
    assert peak < 8 * 2**20, peak


def _person_file_manifest(rows: int, folder: Path) -> Path:
    """A one-version manifest of `rows` waveform files (benchmarks/merge_benchmark.py's), half of them directly in their
    person folder (a layout.person_file finding each), validated: no file on disk (validate reads the manifest)."""
    import time

    import polars as pl

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from merge_benchmark import site_files

    from chorus_batch import commit as commit_module
    from chorus_batch.classify import build_patterns
    from chorus_batch.frames import SCANNED_SCHEMA, empty_errors
    from chorus_batch.scan import WHOLE_SITE, ScanResult
    from chorus_batch.store import Manifest

    person = (pl.col("i") // 1000 + 1_000_000).cast(pl.String)
    files = site_files(rows).with_columns(srcfile=pl.when(pl.col("i") % 2 == 0).then(
        pl.concat_str([person, pl.lit("/"), pl.col("srcfile").str.extract(r"([^/]+)$")])).otherwise(pl.col("srcfile")))
    files = files.select(list(SCANNED_SCHEMA)).with_columns(read=pl.lit(True), md5_source=pl.lit("computed"))
    scanned = ScanResult(files=files, errors=empty_errors(), roots=[("/site", None)], scan_started_ns=time.time_ns(),
                         coverage=WHOLE_SITE, based_on=None)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(folder / "m.sqlite")
    manifest.ensure_schema()
    commit_module.commit(manifest, scanned, manifest.previous_state(write_cache=True), previous_label=None,
                         patterns=build_patterns(None), site="/site")
    return manifest.path


def _python_peak(argv: list[str], out: Path) -> int:
    """tracemalloc's peak of Python memory while the command line runs `argv` with its output to `out` (run once first,
    unmeasured: imports, first queries, and validate's check itself)."""
    import contextlib
    import tracemalloc

    from chorus_batch import cli as cli_module

    for measured in (False, True):
        with open(out, "w", encoding="utf-8") as stream, contextlib.redirect_stdout(stream):
            if measured:
                tracemalloc.start()
            try:
                cli_module.main(argv)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    return peak


def test_validate_json_of_many_findings_is_written_a_slice_at_a_time(tmp_path, monkeypatch):
    """`validate --json` of 990k findings peaked at 2.1 GiB: the findings as a dict per row inside one json.dumps of
    the whole object. The findings (and not_checked) are written JSON_SLICE_ROWS rows at a time, the text unchanged:
    what json.dumps(indent=2) writes of the same object, byte for byte."""
    from chorus_batch import cli as cli_module
    from chorus_batch.review import open_manifest

    db = _person_file_manifest(20_000, tmp_path / "m")
    monkeypatch.setattr(cli_module, "JSON_SLICE_ROWS", 1_000)
    out = tmp_path / "validate.json"
    peak = _python_peak(["validate", "--db", str(db), "--json"], out)
    text = out.read_text(encoding="utf-8")
    whole = json.loads(text)
    assert text == json.dumps(whole, indent=2) + "\n"  # json.dumps' text of the object, byte for byte
    findings = open_manifest(db).findings()
    assert findings.height >= 10_000 and whole["findings"] == findings.to_dicts()
    assert whole["total"] == findings.height and whole["exit_code"] == 1
    # whole: ~15 MB of dicts and text; a slice of 1,000 rows: ~1 MB
    assert peak < 6 * 2**20, peak


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_files_json_and_csv_of_many_files_are_written_a_slice_at_a_time(tmp_path, monkeypatch, flag):
    """`files --json` of 1M files peaked at 2.2 GiB (polars' whole JSON, then a copy), `files --csv` at 930 MiB (the
    whole CSV text). Both are written JSON_SLICE_ROWS rows at a time, the text unchanged, byte for byte."""
    from chorus_batch import cli as cli_module
    from chorus_batch.report.spreadsheet import csv_text
    from chorus_batch.review import open_manifest

    db = _person_file_manifest(20_000, tmp_path / "m")
    frame = open_manifest(db).files()
    # as they were written: polars' JSON of the frame (times as text), or report.spreadsheet's CSV
    expected = cli_module._json_safe(frame).write_json() + "\n" if flag == "--json" else csv_text(frame)[0]
    monkeypatch.setattr(cli_module, "JSON_SLICE_ROWS", 1_000)
    out = tmp_path / "files.out"
    peak = _python_peak(["files", "--db", str(db), flag], out)
    assert out.read_bytes() == expected.encode("utf-8")
    # whole: ~13 MB of JSON (~6 MB of CSV), held once or twice; a slice of 1,000 rows: under 1 MB
    assert peak < 4 * 2**20, peak


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "ascii"])
def test_files_json_in_slices_is_valid_json_in_any_stream_encoding(monkeypatch, encoding):
    """`files --json` to a stream whose encoding cannot hold a name (PYTHONIOENCODING=ascii) writes JSON's escapes
    (`\\u00e9`) throughout, not the stream's (invalid JSON); written a slice at a time, a name no stream encoding
    holds in a later slice than the first still decides it for the whole text, as when it was written at once."""
    import io

    import polars as pl

    from chorus_batch import cli as cli_module

    names = ["a", "b", "caf\u00e9", "d", "e", "\u4e2d"]
    frame = pl.DataFrame({"srcfile": names, "size": list(range(6)), "mtime_ns": [1796475490969854383] * 6})
    text = cli_module._json_safe(frame).write_json()
    try:
        text.encode(encoding)
        expected = text
    except UnicodeEncodeError:
        expected = json.dumps(json.loads(text), ensure_ascii=True)
    monkeypatch.setattr(cli_module, "JSON_SLICE_ROWS", 2)
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding, newline="")
    monkeypatch.setattr(sys, "stdout", stream)
    cli_module._print_frame_json(frame)
    stream.flush()
    assert raw.getvalue() == (expected + "\n").encode(encoding)
    assert json.loads(raw.getvalue().decode(encoding))[2]["srcfile"] == "caf\u00e9"
    assert (expected == text) == (encoding == "utf-8")


def _frames_read(monkeypatch) -> list[tuple[int, int]]:
    """(rows, columns) of each frame read from a manifest from here on, as the list returned fills."""
    from chorus_batch.store import manifest as manifest_module

    read: list[tuple[int, int]] = []
    fetch = manifest_module.fetch_frame

    def counted(cur):
        frame = fetch(cur)
        read.append(frame.shape)
        return frame

    monkeypatch.setattr(manifest_module, "fetch_frame", counted)
    return read


@pytest.mark.parametrize("flag", [None, "--md5sum"])
def test_files_table_and_md5sum_read_only_what_they_print(tmp_path, monkeypatch, capsys, flag):
    """`files` of 1M files read every row and column of the version (~890 MiB peak) to show 200 rows; `--md5sum`
    read 16 columns for two. The table now counts the rows and reads the 200 it shows; --md5sum reads path and MD5.
    The output is what the whole version gave, byte for byte."""
    from chorus_batch import cli as cli_module
    from chorus_batch.report import head_text
    from chorus_batch.review import md5sum_lines, open_manifest

    db = _person_file_manifest(3_000, tmp_path / "m")
    frame = open_manifest(db).files()
    if flag is None:
        expected = (f"version {open_manifest(db).latest()}: 3000 files\n" + "\n".join(head_text(
            frame.select("srcfile", "modality", "person_id", "size", "md5", "version_valid"), 200, "--csv or --json lists them all")) + "\n")
    else:
        expected = "".join(line + "\n" for line in md5sum_lines(frame))
    read = _frames_read(monkeypatch)
    assert cli_module.main(["files", "--db", str(db), *([flag] if flag else [])]) == 0
    assert capsys.readouterr().out == expected
    big = [shape for shape in read if shape[0] > 200]
    assert big == ([] if flag is None else [(3_000, 3)]), read  # --md5sum: srcfile, md5 (and version_valid)


@pytest.mark.parametrize("flags", [["--json"], ["--csv"], ["--json", "--person", "1000001"],
                                   ["--csv", "--modality", "Waveforms", "--person", "1000002"]])
def test_files_json_and_csv_read_the_version_a_slice_at_a_time(tmp_path, monkeypatch, capsys, flags):
    """`files --json`/`--csv` of 1M files read the whole version (~640 MiB peak) before writing it a slice at a time;
    they now read it a slice at a time too (by path: pages of JSON_SLICE_ROWS rows, here 200). The output is what
    the whole version's frame gives, byte for byte."""
    import polars as pl

    from chorus_batch import cli as cli_module
    from chorus_batch.report.spreadsheet import protect
    from chorus_batch.review import open_manifest

    db = _person_file_manifest(3_000, tmp_path / "m")
    person = flags[flags.index("--person") + 1] if "--person" in flags else None
    frame = open_manifest(db).files(person=person, modality="Waveforms" if "--modality" in flags else None)
    assert frame.height > 200
    if "--json" in flags:
        expected = cli_module._json_safe(frame).write_json() + "\n"
    else:
        expected = protect(frame)[0].write_csv()
    shapes = _frames_read(monkeypatch)
    monkeypatch.setattr(cli_module, "JSON_SLICE_ROWS", 200)
    assert cli_module.main(["files", "--db", str(db), *flags]) == 0
    out = capsys.readouterr().out
    assert out == expected
    read = [rows for rows, _ in shapes]
    assert max(read) <= 200 and sum(read) >= frame.height, read
    assert (len(json.loads(out)) if "--json" in flags else pl.read_csv(out.encode()).height) == frame.height


@pytest.mark.parametrize("flag", ["--json", "--csv", None, "--md5sum"])
def test_files_path_reads_only_the_rows_under_it(tmp_path, monkeypatch, capsys, flag):
    """`files --path P --json`/`--csv` read every slice of the version and filtered it here, holding the rows under P
    whole (memory grew with them) before writing them: the query now keeps only the rows under P, and those are
    written a slice at a time. A '%' or '_' in P is a name, never a pattern; P as typed is matched as before (the
    folder, a './' or trailing '/', the exact file, a Windows separator). Output byte for byte the same."""
    import polars as pl

    from chorus_batch import cli as cli_module
    from chorus_batch.report import head_text
    from chorus_batch.report.spreadsheet import protect
    from chorus_batch.review import md5sum_lines, open_manifest

    db = _person_file_manifest(3_000, tmp_path / "m")
    reader = open_manifest(db)
    files = reader.files()
    folder = files["srcfile"].filter(files["srcfile"].str.count_matches("/") >= 2).str.extract(r"^(.*)/[^/]+$")
    folder = folder.value_counts(sort=True)["srcfile"][0]  # the folder holding most files
    typed = {"folder": folder, "slash": folder + "/", "dot": "./" + folder, "windows": folder.replace("/", "\\"),
             "pattern": folder[:-1] + "_", "percent": folder[:-1] + "%", "file": files["srcfile"][7]}
    for name, path in typed.items():
        frame = reader.rows_under(files, path)
        assert (frame.height > 0) == (name not in ("pattern", "percent")), name
        if flag == "--json":
            expected = cli_module._json_safe(frame).write_json() + "\n"
        elif flag == "--csv":
            expected = protect(frame)[0].write_csv()
        elif flag == "--md5sum":
            expected = "".join(line + "\n" for line in md5sum_lines(frame))
        else:
            expected = (f"version {reader.latest()}: {frame.height} file{'' if frame.height == 1 else 's'}\n" + "\n".join(
                head_text(frame.select(list(cli_module.FILE_TABLE_COLUMNS)), 200, "--csv or --json lists them all")) + "\n")
        shapes = _frames_read(monkeypatch)
        monkeypatch.setattr(cli_module, "JSON_SLICE_ROWS", 50)
        assert cli_module.main(["files", "--db", str(db), "--path", path, *([flag] if flag else [])]) == 0
        assert capsys.readouterr().out == expected, name
        read = [rows for rows, _ in shapes]
        # the rows under the path, 50 at a time, and no more than a few others (none of the version's other rows;
        # a path naming nothing is said with the paths it may mean, from the whole version)
        assert not frame.height or (max(read) <= 50 and sum(read) <= frame.height + 50), (name, read)
        if flag is None and frame.height:
            assert pl.concat(list(reader.files_sliced(path=path, rows=50))).equals(frame)


@pytest.mark.parametrize("flag", [None, "--md5sum"])
def test_files_path_table_and_md5sum_read_only_what_they_print(tmp_path, monkeypatch, capsys, flag):
    """`files --path P` as a table held every row under P, all 16 columns, to show 200 and count them; `--md5sum`
    all 16 for two; a P naming nothing read the version's 16 columns to suggest paths. The table now counts in the
    query and reads the 200 rows it shows, --md5sum path and MD5, the suggestions the path column alone."""
    from chorus_batch import cli as cli_module
    from chorus_batch.report import head_text
    from chorus_batch.review import md5sum_lines, open_manifest

    db = _person_file_manifest(3_000, tmp_path / "m")
    reader = open_manifest(db)
    files = reader.files()
    top = files["srcfile"].str.extract(r"^([^/]+)/").value_counts(sort=True)["srcfile"][0]  # the folder of most files
    frame = reader.rows_under(files, top)
    assert frame.height > 200
    if flag is None:
        expected = (f"version {reader.latest()}: {frame.height} files\n" + "\n".join(head_text(
            frame.select(list(cli_module.FILE_TABLE_COLUMNS)), 200, "--csv or --json lists them all")) + "\n")
    else:
        expected = "".join(line + "\n" for line in md5sum_lines(frame))
    read = _frames_read(monkeypatch)
    assert cli_module.main(["files", "--db", str(db), "--path", top, *([flag] if flag else [])]) == 0
    assert capsys.readouterr().out == expected
    # the table: a count and its 200 rows; --md5sum: srcfile, md5 (and version_valid) of the rows under the path
    assert all(rows <= 200 or (flag and columns <= 3) for rows, columns in read), read
    read.clear()
    assert cli_module.main(["files", "--db", str(db), "--path", top + "-nothing", *([flag] if flag else [])]) == 0
    assert "no files under" in capsys.readouterr().err
    assert all(rows <= 1 or columns <= 3 for rows, columns in read), read  # (the paths, to suggest from)


@pytest.mark.parametrize("flags", [[], ["--md5sum"], ["--person"], ["--md5sum", "--modality", "Waveforms"]])
def test_files_of_an_earlier_version_read_in_part_is_what_the_whole_version_gives(tmp_path, capsys, flags):
    """`files` reads only what it prints (the rows shown, or path and MD5): of an earlier version too, whose rows
    are those valid then, not the latest's; byte for byte what the whole version's frame gives."""
    import time

    from chorus_batch import cli as cli_module
    from chorus_batch.report import head_text
    from chorus_batch.review import md5sum_lines, open_manifest
    from chorus_batch.testdata import Spec, sync_tree, write_snapshot
    from conftest import run_site

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    spec = Spec(persons=3, files_per_person=80, size=64, seed=5, change_fraction=0.4)
    write_snapshot(site, spec)
    first = run_site(site, db, validate_site=False).label
    time.sleep(1.1)
    assert sync_tree(site, spec) > 0
    assert run_site(site, db, validate_site=False).label != first
    reader = open_manifest(db)
    person = reader.files(first)["person_id"].drop_nulls().sort()[0] if "--person" in flags else None
    flags = [*flags, person] if person else flags  # (the person id: one the earlier version holds)
    modality = "Waveforms" if "--modality" in flags else None
    frame = reader.files(first, person=person, modality=modality)
    assert 0 < frame.height != reader.files(person=person, modality=modality).height or \
        frame["md5"].to_list() != reader.files(person=person, modality=modality)["md5"].to_list()
    if "--md5sum" in flags:
        expected = "".join(line + "\n" for line in md5sum_lines(frame))
    else:
        expected = "\n".join(head_text(frame.select("srcfile", "modality", "person_id", "size", "md5", "version_valid"),
                                       200, "--csv or --json lists them all")) + "\n"
    capsys.readouterr()
    assert cli_module.main(["files", "--db", str(db), "--as-of", first, *flags]) == 0
    out = capsys.readouterr().out
    assert out.endswith(expected), (out[:400], expected[:400])


def test_a_command_with_its_output_in_a_file_runs_where_os_has_no_geteuid(tmp_path):
    """Windows has no os.geteuid (nor os.fchmod before Python 3.13): private_streams, which every command runs first,
    asked it of a stdout that is a regular file, and every command so redirected there (`validate --json >
    findings.json`, `upload --script azcopy > upload.cmd`) ended in an AttributeError traceback, exit 1, nothing done.
    Simulated by removing both from os in a real CLI process."""
    out = tmp_path / "versions.txt"
    code = ("import os, sys; del os.geteuid; del os.fchmod; "
            "sys.argv = ['chorus-batch', 'versions', '--db', sys.argv[1]]; "
            "from chorus_batch.cli import entry; entry()")
    with open(out, "w") as f:
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none.sqlite")], stdout=f,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert done.returncode == 2 and "no manifest at" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "AttributeError" not in done.stderr


def test_a_traceback_python_prints_itself_from_a_finaliser_or_a_thread_has_its_secrets_masked(tmp_path):
    """The messages and the log were masked, but Python's own "Exception ignored in: <...>" (an SDK's session closed
    in a finaliser) and "Exception in thread ..." (an exception in a worker thread) went to stderr as they were, with
    the SAS or key of the request they quote."""
    code = """if True:
        import threading
        from chorus_batch import cli
        cli._stop_on_signals()
        class Session:
            def __repr__(self):
                return "<Session https://a.blob.core.windows.net/c/x?sv=1&sig=SIGNATURE0123456789>"
            def __del__(self):
                raise ValueError("closing https://a.blob.core.windows.net/c/x?sv=1&sig=SIGNATURE0123456789 failed")
        Session()
        def fail():
            raise OSError('{"conn": "DefaultEndpointsProtocol=https;AccountKey=KEYVALUE0123456789==;x"}')
        thread = threading.Thread(target=fail, name="chorus-hash-1")
        thread.start()
        thread.join()
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "Exception ignored in: " in out.stderr, out.stderr
    assert "ValueError: closing https://a.blob.core.windows.net/c/x?sv=***&sig=*** failed" in out.stderr, out.stderr
    assert "Exception in thread chorus-hash-1:" in out.stderr and "AccountKey=***" in out.stderr, out.stderr
    assert "SIGNATURE0123456789" not in out.stderr and "KEYVALUE0123456789" not in out.stderr, out.stderr
