"""The README as a new site's data engineer follows it: its examples, pasted with only the placeholders filled in,
do what it says they do."""
import re
from pathlib import Path

import polars as pl

from chorus_batch.classify import build_patterns, classify
from chorus_batch.config import load_config

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(lang: str) -> str:
    """The README's first fenced block of `lang`."""
    return re.search(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S).group(1)


def test_config_example_is_accepted_and_keeps_todays_layout(tmp_path):
    # the chorus.toml of "Configuration", its two folders filled in: accepted as printed, and its [patterns] line
    # (which replaces the Waveforms patterns) still takes the layout of today's procedures (it took no
    # Telemetry/EEG folder: every waveform of a v2.1 site was unparsed, a warning each)
    (tmp_path / "site").mkdir()
    (tmp_path / "bedside").mkdir()
    text = _block("toml").replace("/data/chorus/site", str(tmp_path / "site")) \
        .replace("/mnt/bedside/export", str(tmp_path / "bedside"))
    (tmp_path / "chorus.toml").write_text(text, encoding="utf-8")
    config = load_config(tmp_path / "chorus.toml")
    assert config.patterns and "Waveforms" in config.patterns
    paths = ["000001/Waveforms/Telemetry/1000/1000.hea", "000001/Waveforms/EEG/1004/1004_0001.dat",
             "000001/waveforms/telemetry/1000/1000.dat"]
    out = classify(pl.DataFrame({"srcfile": paths}), build_patterns(config.patterns))
    assert out["parse_error"].to_list() == [None] * 3
    assert out["category"].to_list() == ["Telemetry", "EEG", "Telemetry"]
    assert out["session_id"].to_list() == ["1000", "1004", "1000"]


def test_unparsed_path_names_the_configured_patterns():
    # a [patterns] line replaces a modality's layouts: a path it misses was said to be expected in the default
    # layout (Waveforms/Telemetry|EEG/...), which it fitted; the message names the configured pattern instead
    regex = r"^(?P<person_id>\d+)/(?i:waveforms)/(?P<session>[^/]+)/(?P<file>[^/]+)$"
    out = classify(pl.DataFrame({"srcfile": ["000001/Waveforms/EEG/1004/1004.dat", "000001/Images/x.dcm"]}),
                   build_patterns({"Waveforms": [regex]}))
    waveform, image = out["parse_error"].to_list()
    assert "[patterns] Waveforms" in waveform and f"'{regex}'" in waveform and "Telemetry|EEG" not in waveform
    assert image.startswith("path fits no Images layout: expected Images/")  # (its default patterns, as before)


def test_commands_table_names_each_commands_options():
    # the README's Commands table is where a user looks up a flag: each it names is an option of that command, and
    # each option of a command (but -v/-q/--help and the ones every reading command takes) is named there
    import argparse

    from chorus_batch.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = README.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `chorus-batch ([a-z-]+)([^`]*)` \|", text, re.M)
    # the README's own list of the commands --demo makes read the demo's manifest (a command that takes --demo, or
    # one that does not, such as upgrade, whose --db help names `run --demo`: the list is read, not copied here)
    demo_list = re.search(r"`--demo` makes (.*?) read the demo's manifest", text, re.S)
    assert demo_list, "README: the sentence listing the commands that take --demo"
    demo_readers = set(re.findall(r"`([a-z-]+)`", demo_list.group(1))) | {"run"}  # (`run --demo` follows it)
    assert {cmd for cmd, _ in rows} == set(sub.choices)
    for cmd, synopsis in rows:
        named = set()
        for flag in re.findall(r"--(?:\[no-\])?[a-z][a-z0-9-]*", synopsis):
            named |= {flag.replace("[no-]", ""), flag.replace("[no-]", "no-")} if "[no-]" in flag else {flag}
        options = {s for a in sub.choices[cmd]._actions for s in a.option_strings if s.startswith("--")}
        assert named <= options, (cmd, named - options)
        assert options - named <= {"--help", "--verbose", "--quiet", "--config", "--demo"}, (cmd, options - named)
        # "Every command but testdata and import-config also takes --config"; "--demo makes status, versions, ..."
        assert ("--config" in options) == (cmd not in {"testdata", "import-config"}), cmd
        assert ("--demo" in options) == (cmd in demo_readers), (cmd, "--demo: README's list and --help differ")


def test_patterns_changed_recheck_the_latest_version(tmp_path):
    # "When the patterns change (...[patterns] in chorus.toml), the next run classifies the current rows again, in
    # place: records, parse errors, category and layout follow": so does the latest version's check. The run reused
    # the findings made of the rows as classified before (0 warnings), where `status` said 1 per waveform file
    from conftest import run_site
    from sitegen import build_clean_site

    from chorus_batch.review import open_manifest

    build_clean_site(tmp_path / "site", persons=1)
    db = tmp_path / "m.sqlite"
    first = run_site(tmp_path / "site", db, workers=1)
    no_category = [r"^(?P<person_id>[^/]+)/(?i:waveforms)/(?P<session>[^/]+)/(?P<file>[^/]+)$"]
    again = run_site(tmp_path / "site", db, workers=1, patterns={"Waveforms": no_category})
    assert again.label is None and again.previous_label == first.label  # nothing committed: the rows in place
    unparsed = again.findings.filter(pl.col("rule") == "path.unparsed")
    waveforms = open_manifest(str(db)).files().filter(pl.col("modality") == "Waveforms").height
    assert waveforms and unparsed.height == waveforms
    assert open_manifest(str(db)).findings(first.label).filter(pl.col("rule") == "path.unparsed").height == waveforms
    back = run_site(tmp_path / "site", db, workers=1)  # the default patterns again: the warnings go with them
    assert back.findings.filter(pl.col("rule") == "path.unparsed").height == 0


def test_a_value_the_readme_quotes_left_unquoted_is_answered_with_the_quotes(tmp_path):
    # "a share of the previous version's files (`50%`, in quotes in chorus.toml)": written without them, the error
    # said only "fix the TOML syntax at the position given"; it now gives the line as it is written
    import pytest

    from chorus_batch.config_file import read_toml
    from chorus_batch.errors import ConfigError

    for value, fix in [("50%", 'max_delete = "50%"'), ("10GiB", 'max_delete = "10GiB"')]:
        (tmp_path / "chorus.toml").write_text(f"[run]\nmax_delete = {value}   # a comment\n", encoding="utf-8")
        with pytest.raises(ConfigError) as raised:
            read_toml(tmp_path / "chorus.toml")
        assert raised.value.fix == f"a text value is written in quotes in TOML: {fix}"
        assert raised.value.where.endswith("chorus.toml, line 2")
    (tmp_path / "chorus.toml").write_text("[run]\nexclude = [1, 2\n", encoding="utf-8")  # (no quoting fixes that)
    with pytest.raises(ConfigError) as raised:
        read_toml(tmp_path / "chorus.toml")
    assert raised.value.fix == "write a ',' between each two items and a ']' after the last, and run again"


def test_the_manifest_section_names_the_schema_and_its_tables(tmp_path):
    # "## The manifest (SQLite, schema version N)" and its table of tables, one row per table a manifest holds
    import sqlite3

    from chorus_batch import Manifest
    from chorus_batch.store.schema import SCHEMA_VERSION

    text = README.read_text(encoding="utf-8")
    heading = re.search(r"^## The manifest \(SQLite, schema version (\d+)\)$", text, re.M)
    assert heading and int(heading.group(1)) == SCHEMA_VERSION
    section = text[heading.end():text.index("\n## ", heading.end())]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    Manifest(tmp_path / "m.sqlite").ensure_schema()
    with sqlite3.connect(tmp_path / "m.sqlite") as con:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert listed == tables - {"meta"}  # (meta: the schema version and such, named in the text)


def test_one_delete_list_line_refused_is_said_in_the_singular(tmp_path):
    # "one with a space or tab at either end, a leading `/` ... is refused with its line number": one such line was
    # said to be "not site-relative paths as the manifest stores them"
    import pytest

    from chorus_batch.commit import read_delete_list
    from chorus_batch.errors import UsageError

    (tmp_path / "del.txt").write_text("# nightly\n/OMOP/person.csv\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"^1 line of the delete list is not a site-relative path as the manifest "
                                         r"stores it \(line 2 '/OMOP/person.csv': starts with '/'"):
        read_delete_list(str(tmp_path / "del.txt"))


def test_commands_table_shows_optional_flags_in_brackets():
    # a flag the Commands table names outside brackets is one the command cannot do without: `slurm-script --site DIR
    # --db MANIFEST` read as required, while both come from chorus.toml (`slurm-script --config chorus.toml`, as its
    # --help shows), and the manifest defaults as in `run`
    import argparse

    from chorus_batch.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = re.findall(r"^\| `chorus-batch ([a-z-]+)([^`]*)` \|", README.read_text(encoding="utf-8"), re.M)
    for cmd, synopsis in rows:
        bare = synopsis
        while (shorter := re.sub(r"\[[^\[\]]*\]", "", bare)) != bare:  # (groups nest: [--slurm [--shards N]])
            bare = shorter
        required = {s for a in sub.choices[cmd]._actions if a.required for s in a.option_strings}
        assert set(re.findall(r"--[a-z][a-z0-9-]*", bare)) == required, cmd


def test_a_command_given_no_manifest_names_the_run_that_starts_it_there(tmp_path):
    # "Commands that read a manifest take --db, else [manifest] db ..., else ./chorus_manifest.sqlite": where there is
    # none, the fix said "run `chorus-batch run` first", which pasted in a folder with no chorus.toml stopped for want
    # of a site, and with one ran into [manifest] db, not the --db given. The command it names now, DIR filled in,
    # starts the manifest the command asked for, and the command then reads it.
    import shlex

    from conftest import cli, write

    site, here = tmp_path / "site", tmp_path / "a folder"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    here.mkdir()
    empty = tmp_path / "empty site"
    empty.mkdir()
    for command in (["versions"], ["registry", "--out", "release"], ["versions", "--db", "my manifest.sqlite"]):
        out = cli(*command, cwd=here)
        assert out.returncode == 2 and "no manifest at" in out.stderr, out.stderr
        pasted = re.search(r"`(chorus-batch run --site DIR --db [^`]+)`", out.stderr)
        assert pasted, out.stderr
        argv = [str(site) if word == "DIR" else word for word in shlex.split(pasted.group(1))][1:]
        assert cli(*argv, "-q", "--no-validate", cwd=tmp_path).returncode == 0  # (another folder: the path is whole)
        assert cli(*command, cwd=here).returncode == 0, (command, cli(*command, cwd=here).stderr)
        for name in ("chorus_manifest.sqlite", "my manifest.sqlite"):
            for f in here.glob(name + "*"):
                f.unlink()
    # a manifest with no version yet (a first run over an empty site), given to validate
    assert cli("run", "-q", "--site", str(empty), "--db", "m.sqlite", cwd=here).returncode == 5  # refused, the manifest made
    out = cli("validate", "--db", "m.sqlite", cwd=here)
    assert out.returncode == 2 and "no versions yet" in out.stderr, out.stderr
    pasted = re.search(r"`(chorus-batch run --site DIR --db [^`]+)`", out.stderr)
    argv = [str(site) if word == "DIR" else word for word in shlex.split(pasted.group(1))]
    assert cli(*argv[1:], "-q", "--no-validate", cwd=tmp_path).returncode == 0
    checked = cli("validate", "--db", "m.sqlite", cwd=here)  # (1: the one-file site's findings)
    assert checked.returncode in (0, 1) and "validation:" in checked.stdout, checked.stderr


def test_validation_examples_do_what_their_comments_say_in_the_sites_own_folder(tmp_path):
    # The Validation section's example lines, pasted with their paths filled in, in the folder a site's cron line cd's
    # into (its ./chorus_manifest.sqlite there). `validate --site /data/new_submission  # a folder before its first
    # run` showed that manifest's latest version, "0 errors", exit 0, for a folder with 13 errors it never listed.
    import shlex

    from conftest import cli, write
    from sitegen import build_clean_site, person_ids

    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Validation\n"):]
    section = section[:section.index("\n## ", 1)]
    examples = re.findall(r"^    chorus-batch (validate [^#\n]*?)\s*(?:#.*)?$", section, re.M)
    assert len(examples) >= 6 and any("--site /data/new_submission" in e for e in examples), examples
    site, submission, here = tmp_path / "site", tmp_path / "new_submission", tmp_path / "srv chorus"
    build_clean_site(site, persons=2)
    write(submission, "OMOP/person.csv", b"x\n")  # (no person_id column, 12 tables missing)
    here.mkdir()
    assert cli("run", "-q", "--site", str(site), cwd=here).returncode == 0  # ./chorus_manifest.sqlite
    db = here / "chorus_manifest.sqlite"
    person = person_ids(2)[0]
    for example in examples:
        argv = [str(submission) if w == "/data/new_submission" else str(db) if w == "site_manifest.sqlite"
                else person if w == "000123" else w for w in shlex.split(example)]
        out = cli(*argv, cwd=here)
        assert "Traceback" not in out.stderr and out.returncode in (0, 1), (example, out.stderr)
        if "--site" in argv:  # the folder's own findings, not the manifest's version; nothing left beside it
            assert out.returncode == 1 and "omop.missing_table" in out.stdout, (example, out.stdout, out.stderr)
            assert "checking the folder on its own" in out.stderr and f"--db {db.name}" in out.stderr, out.stderr
            assert sorted(p.name for p in submission.rglob("*")) == ["OMOP", "person.csv"]
        elif "--explain" not in argv:
            assert str(db) in out.stdout and out.returncode == 0, (example, out.stdout)  # (a clean site)
    # given by its recorded root, the site is the manifest's: its stored version, no folder checked on its own
    same = cli("validate", "--site", str(site), cwd=here)
    assert same.returncode == 0 and f"of {db}" in same.stdout and "on its own" not in same.stderr, same.stderr


def test_status_and_dry_run_say_how_many_paths_they_show():
    # `status --help` said "The same as `run --dry-run`, with every path", while its table shows the first 50 (its own
    # first example says so) and `run --dry-run` the first 20: what the README and both helps say is what they print
    import argparse

    from chorus_batch.cli import DRY_RUN_LIMIT, STATUS_LIMIT, _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    status, run = sub.choices["status"], sub.choices["run"]
    assert next(a.default for a in status._actions if "--limit" in a.option_strings) == STATUS_LIMIT
    assert "with every path" not in status.description
    assert f"`run --dry-run` (which shows the first {DRY_RUN_LIMIT} paths)" in status.description
    assert f"the first {STATUS_LIMIT} paths in its table" in status.description
    assert f"# the first {STATUS_LIMIT} changes" in status.epilog
    dry = next(a.help for a in run._actions if "--dry-run" in a.option_strings)
    assert f"the first {DRY_RUN_LIMIT} changed paths" in dry and "lists every path" not in dry
    text = README.read_text(encoding="utf-8")
    assert f"`run --dry-run`, which shows the first {DRY_RUN_LIMIT} paths" in text
    assert f"The table shows the first {STATUS_LIMIT} changes and findings" in text


def test_cron_example_finds_the_installed_command(tmp_path):
    # "A cron line": pasted into a crontab as printed (/srv/chorus filled in), run as cron runs it (/bin/sh, cron's own
    # PATH=/usr/bin:/bin unless the crontab sets one). Without a PATH line naming the venv's bin folder, where the
    # README's `pip install` puts chorus-batch, every night ended "exit 127" (chorus-batch: not found), no run made.
    import os
    import subprocess

    block = re.search(r"^  ```\n(  MAILTO=.*?)^  ```", README.read_text(encoding="utf-8"), re.M | re.S).group(1)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}  # cron's defaults
    line = None
    for raw in block.replace("/srv/chorus", str(tmp_path)).splitlines():
        raw = raw.strip()
        if m := re.fullmatch(r"([A-Z_]+)=(.*)", raw):
            env[m.group(1)] = m.group(2)
        elif raw:
            line = re.sub(r"^(\S+\s+){5}", "", raw).replace("\\%", "%")  # the command, as cron hands it to sh
    (tmp_path / "log").mkdir()
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    stub = bin_dir / "chorus-batch"
    for code, mailed in ((0, ""), (1, ""), (4, "chorus-batch run failed, exit 4")):
        stub.write_text(f"#!/bin/sh\nexit {code}\n")
        os.chmod(stub, 0o755)
        out = subprocess.run(["/bin/sh", "-c", line], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.stdout.startswith(mailed) and bool(out.stdout) == bool(mailed), (code, out.stdout, out.stderr)
        assert (tmp_path / "log" / "run.log").read_text().rstrip().endswith(f"== exit {code}")
    # The folder gone (a deploy replaced it): the shell says so, which cron mails; it was "Illegal number" and
    # "exit " with rc never set
    gone = subprocess.run(["/bin/sh", "-c", line.replace(f"cd {tmp_path}", f"cd {tmp_path}/gone")], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert gone.returncode != 0 and "gone" in gone.stderr and "Illegal" not in gone.stderr, gone
