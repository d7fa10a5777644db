"""The command line: each command parses, calls one library function, prints.

Library code raises typed errors (errors.py); only this module turns them into
messages and exit codes.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import functools
import itertools
import io
import json
import logging
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import release
from .errors import (EXIT_CODES_HELP, STOP_SIGNALS, ChorusError, ExitCode, Stopped, UsageError, committed_stays,
                     forget_signals, handling_stop, interrupted_at_start, holding_signal, note_signal, machine_limit,
                     masked_thread_exceptions, quiet_lost_stops, serving_command_line, signals_unwrapped,
                     hold_until_work, work_starts)
from .faults import pause
from .units import closest as _close
from .units import command_word, plural, quoted, shown, shown_name, shown_text, stage_words

pause("start-up")  # (tests: Ctrl-C while the command line loads)

DEMO_DB = "chorus_demo_manifest.sqlite"
DEFAULT_DB = "chorus_manifest.sqlite"
# The commands that read a manifest and take --demo, to look at what `run --demo` wrote (it suggests some of them).
DEMO_READERS = ("status", "versions", "changes", "files", "diff", "history", "report", "review", "validate", "registry")
# --db of the commands that read a manifest: the demo's is read only when nothing else is there, and they say so.
READ_DB_DEFAULT = (f"(default: from chorus.toml, else ./{DEFAULT_DB}, else ./{DEMO_DB} as `run --demo` writes it; "
                   "the command then says which one it reads)")
READ_DB_HELP = "manifest file " + READ_DB_DEFAULT
READ_CONFIG_HELP = "settings file whose [manifest] db is read (default: ./chorus.toml if present)"
PATH_HELP = ("only this file, or the files under this folder: site-relative, or absolute under a recorded root "
             "(Windows separators too), as `history` takes it")
STATUS_LIMIT = 50  # rows `status` shows unless --limit / --all
DRY_RUN_LIMIT = 20  # changes `run --dry-run` shows (`status` shows more)
MD5SUM_HELP = ("print the lines `md5sum -c` checks (MD5, two spaces, path), paths relative to the version folder, sorted; "
               "files without an MD5 (unverifiable) are left out and counted on stderr, exit code 1")
log = logging.getLogger("chorus_batch")


def demo_site() -> Path:
    """The demo site: inside the installed package, or data/ in a source checkout."""
    packaged = Path(__file__).with_name("demo_site")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "data" / "demo_site"


# The options whose value is a path (a word starting with '-' is then also written ./-x); the others take a label, a
# time, a URL or a list, written --option=-x only
_PATH_DESTS = frozenset({"config", "site", "db", "delete_list", "parquet", "out", "staging", "merge", "path", "from_log",
                         "exclude"})


class _StoreOnce(argparse._StoreAction):
    """An option that takes one value (--site, --db, --config, --workers, ...): given twice with two values it is a
    usage error naming both. argparse kept the last, silently: `chorus-batch run --db /data/m.sqlite $EXTRA` with a
    --db in $EXTRA (a cron line put together from variables) committed to the other manifest. Twice the same is one."""

    def __call__(self, parser, namespace, values, option_string=None):
        _given_once(parser, self.dest, option_string, values)
        super().__call__(parser, namespace, values, option_string)


def _given_once(parser, dest: str, option_string: str | None, values, *, switch: bool = False) -> None:
    """Refuse a second, different value of one setting (see _StoreOnce); `switch`: an on/off pair, where the
    option itself is the value (`--validate ... --no-validate`)."""
    given = parser.given  # type: ignore[attr-defined]
    if dest in given and given[dest][1] != values:
        first, value = given[dest]
        if switch:
            parser.error(f"{first} and {option_string} are both given; they say opposite things: keep the one "
                         "meant (nothing was done)")
        said = lambda option, value: f"{option} {command_word(str(value))}" if option else repr(value)  # noqa: E731
        parser.error(f"{option_string or dest} is given twice, with two values ({said(first, value)}, then "
                     f"{said(option_string, values)}); it takes one: keep the one meant (nothing was done)")
    given[dest] = (option_string, values)


class _SwitchOnce(argparse.BooleanOptionalAction):
    """--validate / --no-validate (and the other on/off pairs): both on one command line (`run --no-validate
    $EXTRA` with --validate in $EXTRA) is refused, as a value given twice is; argparse took the last, unsaid."""

    def __call__(self, parser, namespace, values, option_string=None):
        _given_once(parser, self.dest, option_string, not option_string.startswith("--no-"), switch=True)
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """Every command's parser. `validate --help` lists the rules: the rules module (and polars)
    is imported only when that help is shown, so other help stays instant."""

    def __init__(self, *args, **kwargs):
        # No abbreviations (`--sit` for --site, `--ver` for --verify-sample): a nightly line's shortened or
        # mistyped option must not quietly mean another one once a new option shares its start.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)  # (add_argument's default action)
        self.register("action", "store", _StoreOnce)
        self.given: dict[str, tuple[str | None, object]] = {}  # dest -> (option, value) of the parse going on

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self.given = {}
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        if self.epilog and "{rules}" in self.epilog:
            from .validate import RULES

            width = max(len(rule.id) for rule in RULES)
            self.epilog = self.epilog.replace("{rules}", "\n".join(
                f"  {rule.id.ljust(width)}  {rule.severity:<7}  {rule.title}" for rule in RULES))
        return super().format_help()

    words: list[str] = []  # the command line being parsed (_parse)

    def error(self, message: str):  # type: ignore[override]
        import re

        # `history -1+1`, `files --path -notes.txt`: a name starting with '-' is read as a flag, and argparse said
        # only that the path was missing or --path had no value
        missing = re.match(r"(?:argument (\S+): expected one argument|the following arguments are required)", message)
        dashed = [word for word in _Parser.words if missing and word.startswith("-") and not word.startswith("--")
                  and word != "-" and word not in self._option_string_actions]  # (-v, -q, -h are flags)
        if dashed:
            word, flag = dashed[0], missing.group(1) if missing else None
            q = command_word
            action = self._option_string_actions.get(flag.split("/")[0]) if flag else None
            if flag and flag.startswith("--") and action is not None and action.dest not in _PATH_DESTS:
                # a label, a time, a URL, a list: './-x' is no way to write it (`--version -x` was told --version ./-x)
                value, what = q(f"{flag}={word}"), "a value"
            elif flag and flag.startswith("--"):
                value, what = f"{q(f'{flag}={word}')} or {flag} {q('./' + word)}", "a name"
            else:
                value, what = f"{q('./' + word)}, or -- {q(word)} at the end of the command line", "a name"
            message += f"; {word!r} starts with '-', so it was read as a flag, not as {what}: write {value}"
        explicit = re.match(r"argument (\S+): ignored explicit argument '(.*)'$", message, re.S)
        if explicit:  # `--validate=false`, `--json=1`: "ignored explicit argument 'false'" said what, not what to do
            message = _flag_takes_no_value(explicit.group(1).split("/"), explicit.group(2))
        from .urls import scrub

        message = scrub(message)  # (it quotes what was given: a SAS in the wrong place, say)
        words = _Parser.words[:_Parser.words.index("--")] if "--" in _Parser.words else _Parser.words
        # a script parsing stdout gets why, as from any other failing command (`--json=1` too)
        if any(word == "--json" or word.startswith("--json=") for word in words):
            _print_json_error(int(ExitCode.USAGE), message, where=self.prog,
                              fix=f"see `{self.prog} --help` for its options and examples")
        super().error(message)


def _flag_takes_no_value(flags: list[str], value: str) -> str:
    """The message for an on/off flag given a value (`--validate=false`, `--json=1`, as other tools take them): which
    flag takes no value, and how to say what was meant."""
    written = next((word.partition("=")[0] for word in _Parser.words if word.partition("=")[0] in flags
                    and "=" in word), flags[0])
    on = next((flag for flag in flags if flag.startswith("--") and not flag.startswith("--no-")), written)
    off = next((flag for flag in flags if flag.startswith("--no-")), None)
    said = f"{written}={value}: {written} is a flag and takes no value"
    meant_off = value.strip().lower() in ("false", "no", "off", "0", "n", "f", "")
    meant_on = value.strip().lower() in ("true", "yes", "on", "1", "y", "t")
    if written == off:  # (`--no-validate=true`)
        return said + (f"; write {off}" if meant_on else f"; write {on}" if meant_off else f"; write {off} or {on}")
    if off is not None:
        return said + (f"; write {on}" if meant_on else f"; write {off}" if meant_off else f"; write {on} or {off}")
    return said + (f"; write {on}" if meant_on else f"; leave {on} out" if meant_off
                   else f"; write {on} alone, or leave it out")


def _checked(parser_name: str):
    """An argparse type: the text, once config's `parser_name` accepts it (imported when a value is given,
    so that --help stays instant)."""
    def check(text: str) -> str:
        from . import config

        try:
            getattr(config, parser_name)(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


def _byte_count(text: str) -> int:
    """An argparse type: a byte count as the settings take one (4096, 64KiB, 1M)."""
    from .config import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    return _in_range(value, text, 0, 100)


def _in_range(value, text: str, least, most):
    """`value` (read from `text`) if least <= value <= most: the one check of every numeric option's range, whose
    message repeats what was given (`--verify-sample 200` was "must be between 0 and 100", the 200 not said)."""
    if least <= value <= most:
        return value
    if isinstance(value, float):  # (a percentage: both ends said)
        raise argparse.ArgumentTypeError(f"must be between {least} and {most}, not {text}")
    raise argparse.ArgumentTypeError(f"must be at least {least:,}, not {text}" if value < least
                                     else f"must be at most {most:,}, not {text}")


INT_MAX = 2**31 - 1  # what sbatch and polars take as a count


def _positive_int(text: str, most: int = INT_MAX) -> int:
    """A whole number from 1 to `most`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    # (--limit 10**20 was an internal OverflowError in polars; --shards 10**20 a Slurm array)
    return _in_range(value, text, 1, most)


def _whole(text: str) -> int:
    """Any whole number (testdata's --seed: "invalid int value", where every other option says "not a whole number")."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _testdata_count(text: str) -> int:
    """testdata's --persons and --files-per-person, each checked on its own: `--persons 0` was "testdata sizes out of
    range: --persons 0, --files-per-person 12, --size 1024, --change-fraction 0.2", which of the four unsaid, and
    `--persons 1e3` "invalid int value"."""
    from .testdata import MAX_FILES

    return _positive_int(text, MAX_FILES)


def _fraction(text: str) -> float:
    """A share from 0 to 1 (testdata's --change-fraction; nan and inf refused as out of range)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1 (e.g. 0.2)") from None
    return _in_range(value, text, 0, 1)


def _workers(text: str) -> int:
    """A number of worker processes or threads: 1 to 256 (as `workers` in chorus.toml; more would only thrash).
    (--workers 99999999999 was told "must be at most 2,147,483,647", a limit that is not the option's.)"""
    return _positive_int(text, 256)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chorus-batch",
        description="Track a CHoRUS site's data tree: list, classify, hash, diff and version it in a SQLite manifest.",
        epilog="example:\n  chorus-batch run --site /data/site --db site_manifest.sqlite\n\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output (stage timings)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output, only the result")
    parser.add_argument("--version", action="version", version=f"chorus-batch {release()}",
                        help="print chorus-batch's version and exit")
    # The same flags after the command name (SUPPRESS keeps the top-level value otherwise).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parser.commands = sub.choices  # type: ignore[attr-defined]  # name -> its parser, for "did you mean"

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        # `versions --help`, `changes --help` went from the usage straight to the options: what the command does, in
        # its one line from `chorus-batch --help`, where it has no longer description of its own
        if "description" not in kwargs and kwargs.get("help"):
            kwargs["description"] = kwargs["help"][:1].upper() + kwargs["help"][1:] + "."
        return sub.add_parser(name, parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    run = command(
        "run",
        help="scan the site and commit a new version if anything changed",
        description="Scan the site, hash new or changed files, compare with the previous version and commit "
                    "the changes as a new version. The site is --site, else [site] root of ./chorus.toml (or "
                    "--config FILE); --demo runs on the demo site that comes with chorus-batch.",
        epilog="examples:\n"
               f"  chorus-batch run --demo                            # the demo site, into ./{DEMO_DB}\n"
               "  chorus-batch run --site /data/site --db /data/manifest.sqlite\n"
               "  chorus-batch run --config chorus.toml --json\n"
               "  chorus-batch run --mode append --delete-list deleted.txt\n"
               "  chorus-batch run --site /data/site --db m.sqlite --shard 0/4 --staging /scratch/shards  # one of 4\n"
               "  chorus-batch run --site /data/site --db m.sqlite --merge /scratch/shards   # then commit them\n\n"
               + EXIT_CODES_HELP,
    )
    _site_flags(run)
    run.add_argument("--demo", action="store_true",
                     help=f"run on the demo site that comes with chorus-batch (manifest: ./{DEMO_DB}, or --db)")
    run.add_argument("--parquet", metavar="DIR", help="also write a Parquet snapshot of each version: "
                     "DIR/version=<label>/{manifest,changes,registry,scan_errors,findings}.parquet")
    run.add_argument("--rehash", action="store_true", help="hash every file, not only new or changed ones")
    run.add_argument("--dry-run", action="store_true", help="report what would change (the summary, the first "
                     f"{DRY_RUN_LIMIT} changed paths, what validation would find); write nothing. `status` lists more, `status --all` every path")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.add_argument("--version", dest="version_label", metavar="LABEL", help="version label (default: UTC start, YYYYMMDDhhmmss)")
    run.add_argument("--verify-sample", type=_percent, metavar="PERCENT",
                     help="re-read this share of the unchanged files each run, the longest unverified first, so the "
                          "whole site is re-verified over time (default 1; 0: off)")
    run.add_argument("--verify-max-bytes", type=_checked("parse_bytes"), metavar="BYTES",
                     help="at most this much re-verification a run (default 10GiB; e.g. 500MB, 2TiB)")
    run.add_argument("--shard", metavar="K/N", help="scan only shard K of N (from 0) into --staging, for a Slurm job array "
                     "(default there: SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT); writes no manifest")
    run.add_argument("--staging", metavar="DIR", help="where shards write their scans (shared by all of them)")
    run.add_argument("--merge", metavar="DIR", help="commit the shards' scans in DIR as one version (all N shards, "
                     "based on the latest version), then validate and report as a plain run")

    status = command(
        "status", help="what a run would commit, path by path, and what validation would find; writes nothing",
        description="The changes a `run` would commit now, path by path (added, removed, replaced, renamed), and the "
                    "findings validation would give, without writing anything: no version, no run row, no cache "
                    "file; a manifest that does not exist is not created, one in Azure is read, not locked. The same "
                    f"as `run --dry-run` (which shows the first {DRY_RUN_LIMIT} paths), with the first {STATUS_LIMIT} "
                    "paths in its table (--limit N, --all), every one in --csv and --json. Exit code 1 when validation "
                    "would find errors (or the scan recorded problems), 5 when the run would be refused (--max-delete).",
        epilog="examples:\n"
               f"  chorus-batch status --site /data/site --db /data/manifest.sqlite      # the first {STATUS_LIMIT} changes\n"
               "  chorus-batch status --config chorus.toml --all\n"
               "  chorus-batch status --site /data/new_submission --csv > would_change.csv   # before the first run\n"
               "  chorus-batch status --json | jq '.changes[] | select(.change == \"removed\") | .srcfile'\n\n"
               + EXIT_CODES_HELP,
    )
    _site_flags(status)
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--limit", type=_positive_int, default=STATUS_LIMIT, metavar="N",
                       help=f"rows of changes and findings in the table (default {STATUS_LIMIT})")
    shown.add_argument("--all", action="store_true", help="every change and finding in the table")
    fmt = status.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true",
                     help="one JSON object: the run summary, with every change (`changes`) and finding (`findings_list`)")
    fmt.add_argument("--csv", action="store_true",
                     help="the changes as CSV with a header row (the findings' counts go to stderr) (a name a spreadsheet would run as a formula, =... +... -... @..., is written with a ' in front)")

    td = command(
        "testdata", help="write a synthetic site: OUT/first and OUT/second",
        description="Write two deterministic snapshots of a synthetic site in one of the CHoRUS layouts (--layout); the "
                    "second keeps, modifies, renames, deletes and adds files relative to the first.",
        epilog="example:\n  chorus-batch testdata /tmp/site --persons 50 --files-per-person 20 --seed 7\n"
               "  chorus-batch run --site /tmp/site/first --db /tmp/m.sqlite && chorus-batch run --site /tmp/site/second --db /tmp/m.sqlite\n\n"
               + EXIT_CODES_HELP,
    )
    td.add_argument("out", help="folder to write OUT/first and OUT/second into (new, or empty)")
    td.add_argument("--persons", type=_testdata_count, default=20, help="persons in the site (default 20)")
    td.add_argument("--files-per-person", type=_testdata_count, default=12,
                    help="files under each person's folder P/ in the first snapshot (default 12)")
    td.add_argument("--size", type=_byte_count, default=1024, metavar="BYTES",
                    help="bytes per bulk file (signal .dat, flat waveform, DICOM padded to about this); 4096, 64KiB, 1M "
                         "(default 1024)")
    td.add_argument("--seed", type=_whole, default=0,
                    help="random seed: the same seed writes the same site (default 0)")
    td.add_argument("--change-fraction", type=_fraction, default=0.2,
                    help="share of files that differ in the second snapshot, 0 to 1 (default 0.2)")
    td.add_argument("--workers", type=_workers, help="processes writing files (default: the CPUs this process may use, at most 16)")
    td.add_argument("--layout", choices=("v2.1", "v2.0", "v1.0", "flat"), default="v2.1",
                    help="the procedures' edition the site follows: v2.1 (today's, the default), v2.0, v1.0 or flat (the initial SOP)")

    versions = command(
        "versions", help="list the versions in a manifest",
        epilog="example:\n  chorus-batch versions --db site_manifest.sqlite --json\n\n" + EXIT_CODES_HELP,
    )
    versions.add_argument("--db", help="manifest file, or a --parquet snapshot folder " + READ_DB_DEFAULT)
    versions.add_argument("--config", help=READ_CONFIG_HELP)
    versions.add_argument("--json", action="store_true", help="print a JSON array of objects, one a version")

    changes = command(
        "changes", help="show the change set of a version (default: the latest)",
        epilog="examples:\n  chorus-batch changes --db site_manifest.sqlite --version 20261127013000 --csv > changes.csv\n"
               "  chorus-batch changes --version 20261127013000 --md5sum > checksums.md5   # ship it with the version; centrally:\n"
               "  cd <version folder> && md5sum -c --quiet checksums.md5   # the folder holds the version's changes\n\n"
               + EXIT_CODES_HELP,
    )
    changes.add_argument("--db", help="manifest file, or a --parquet snapshot folder " + READ_DB_DEFAULT)
    changes.add_argument("--config", help=READ_CONFIG_HELP)
    changes.add_argument("--version", dest="version_label", metavar="LABEL|ISO-TIME", help="default: the latest version")
    changes.add_argument("--path", help=PATH_HELP + " (either side of a rename)")
    fmt = changes.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON array of objects, one a change")
    fmt.add_argument("--csv", action="store_true", help="print CSV with a header row (a name a spreadsheet would run as a formula, =... +... -... @..., is written with a ' in front)")
    fmt.add_argument("--md5sum", action="store_true", help=MD5SUM_HELP + " (added, replaced, renamed)")

    validate = command(
        "validate", help="check a site (or the manifest's latest version) against the CHoRUS procedures",
        description="Check a site against the CHoRUS procedures: layout, Metadata/ (READINESS.md, SUBMISSION.md, the "
                    "signal mappings), OMOP tables, persons vs person.csv, the waveform and image registries (linkage), "
                    "WFDB headers against the mappings, DICOM headers, empty and duplicate files.\n\n"
                    "With a manifest: its latest version is checked, reading files from the roots the manifest "
                    "records (or --site); findings are stored per version and headers are read only for contents new "
                    "since they were last read. `run` does this after each commit unless --no-validate.\n"
                    "With --site and no manifest (and no --db), or a ./chorus_manifest.sqlite that records no root at --site: the "
                    "folder is checked in a temporary manifest that is removed afterwards; nothing is left behind. With --db NEW: the manifest is created.",
        epilog="examples:\n  chorus-batch validate --site /data/new_submission          # a folder, before any run\n"
               "  chorus-batch validate --db site_manifest.sqlite             # the latest version, from its roots\n"
               "  chorus-batch validate --json | jq '.findings[] | select(.severity == \"error\")'\n\n"
               "rules:\n" + "{rules}" + "\n\n" + EXIT_CODES_HELP,
    )
    validate.add_argument("--config", help="settings file (default: ./chorus.toml if present)")
    validate.add_argument("--site", help="site root folder (default: from the config, else the roots the manifest records)")
    validate.add_argument("--db", help=f"manifest file (default: from the config, else ./{DEFAULT_DB} if it exists; "
                          f"without --site, else ./{DEMO_DB} as `run --demo` writes it, and it says so)")
    validate.add_argument("--workers", type=_workers, help="processes reading headers (default: the CPUs this process may use, at most 16)")
    validate.add_argument("--force", action="store_true", help="check again even if this version was checked")
    validate.add_argument("--json", action="store_true", help="print {version, manifest, total, by_severity, by_rule, examples, findings: [...], exit_code} as "
                          "JSON (with --site and no manifest also not_checked: the files its scan could not take)")
    validate.add_argument("--version", dest="version_label", metavar="LABEL|ISO-TIME",
                          help="an earlier version's findings, as stored when it was checked (not checked again: a "
                               "version's files are read only while they are the latest; default: the latest)")
    validate.add_argument("--rule", action="append", metavar="RULE",
                          help="only the findings of this rule (wfdb.bad_header), of a family (dicom. or dicom.*) or of "
                               "rules matching a glob; repeat it for several. The counts, the list and the exit code "
                               "(unless --fail-on) are of the findings shown; every finding stays stored")
    validate.add_argument("--severity", choices=("error", "warning", "info"),
                          help="only findings of this severity or a more serious one (warning: errors and warnings)")
    validate.add_argument("--path", help="only the findings of this file, or of the files under this folder (a person "
                                         "folder: --path 000123), site-relative; a glob (*, ?, [..]) matches whole "
                                         "paths ('*/Images/*')")
    validate.add_argument("--fail-on", choices=("error", "warning", "never"),
                          help="exit 1 when the version has findings of this severity or a more serious one "
                               "(warning: errors and warnings; never: findings never make it 1), counting every "
                               "finding whatever --rule/--severity/--path show (a cron's check). Without it: exit 1 "
                               "when the findings shown include an error")
    validate.add_argument("--explain", metavar="RULE",
                          help="print what a rule (or each rule of a family, dicom., or a glob) checks: its id, "
                               "severity and text; reads no manifest")

    reg = command(
        "registry", help="write the linkage registries (waveforms, images) of a version",
        description="The waveform and image registries of the Multimodal-Linkage procedure, one row per file: file_id "
                    "(stable across versions), proc_id (one per session or accession, allocated once and kept in "
                    "the manifest, from the ranges in [registry] of chorus.toml), person_id, group_id, visit_id (the "
                    "person's visit enclosing the file's capture time), datetime, src_file, trg_file. Capture times "
                    "come from DICOM and WFDB headers (read once, cached by content).",
        epilog="examples:\n  chorus-batch registry --db site_manifest.sqlite --out release/\n"
               "  chorus-batch registry --version 20261101020000 --out release/ --omop   # + procedure_occurrence.csv\n\n"
               + EXIT_CODES_HELP,
    )
    reg.add_argument("--config", help="settings file (default: ./chorus.toml if present)")
    reg.add_argument("--db", help=READ_DB_HELP)
    reg.add_argument("--site", help="site root, where headers not read yet are read (default: the recorded roots)")
    reg.add_argument("--version", dest="version_label", metavar="LABEL|ISO-TIME", help="default: the latest version")
    reg.add_argument("--out", required=True, help="folder for waveform_registry.csv and image_registry.csv")
    reg.add_argument("--omop", action="store_true", help="also write the PROCEDURE_OCCURRENCE rows (procedure_occurrence.csv)")
    reg.add_argument("--workers", type=_workers, help="processes reading headers (default: the CPUs this process may use, at most 16)")

    upgrade = command(
        "upgrade", help="bring a manifest written by an older chorus-batch up to this release's schema",
        description="Migrate the manifest in place, one numbered step after the other, all in one transaction (an "
                    "upgrade that fails or is stopped leaves the manifest at the schema it had, never between two "
                    "steps): every version, file row, record, finding and upload record is kept. `run` and `validate` do this too; read-only commands ask "
                    "for it. Also says what the next run does that no schema step does (a release of the same schema "
                    "too): classify the current rows again, check the latest version again by this release's rules.",
        epilog="example:\n  chorus-batch upgrade --db site_manifest.sqlite\n\n" + EXIT_CODES_HELP,
    )
    upgrade.add_argument("--db", help=READ_DB_HELP)
    upgrade.add_argument("--config", help=READ_CONFIG_HELP)

    def version_of_manifest(command: argparse.ArgumentParser) -> None:
        """--db, --config, --version: one version of a manifest or snapshot folder, as report and review read it."""
        command.add_argument("--db", help="manifest file, or a --parquet snapshot folder " + READ_DB_DEFAULT)
        command.add_argument("--config", help=READ_CONFIG_HELP)
        command.add_argument("--version", dest="version_label", metavar="LABEL|ISO-TIME",
                             help="default: the latest version")

    def output_flags(command: argparse.ArgumentParser, md5sum: str | None = None) -> None:
        command.add_argument("--db", help="manifest file, or a --parquet snapshot folder " + READ_DB_DEFAULT)
        command.add_argument("--config", help=READ_CONFIG_HELP)
        fmt = command.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true", help="print a JSON array of objects")
        fmt.add_argument("--csv", action="store_true", help="print CSV with a header row (a name a spreadsheet would run as a formula, =... +... -... @..., is written with a ' in front)")
        if md5sum is not None:
            fmt.add_argument("--md5sum", action="store_true", help=MD5SUM_HELP + md5sum)

    files = command(
        "files", help="the file set as it was at a version or time (default: now)",
        description="List the files of a version: every file that was current then, with its MD5, size and parsed fields. "
                    "AS_OF is a version label or an ISO date-time (the latest version committed at or before it).",
        epilog="examples:\n  chorus-batch files --as-of 20261101020000 --modality Waveforms --csv > waveforms.csv\n"
               "  chorus-batch files --as-of 2026-11-01T00:00:00Z --person 000123 --json\n"
               "  chorus-batch files --as-of 20261101020000 --md5sum > site.md5   # every file: checks a whole copy of the site\n"
               "  cd <copy of the site> && md5sum -c --quiet site.md5\n\n" + EXIT_CODES_HELP,
    )
    files.add_argument("--as-of", metavar="LABEL|ISO-TIME", help="version label or ISO date-time (default: the latest version)")
    files.add_argument("--modality", help="only this modality (OMOP, Metadata, Waveforms, Images, Other)")
    files.add_argument("--person", help="only this person id")
    files.add_argument("--path", help=PATH_HELP)
    output_flags(files, "")

    diff = command(
        "diff", help="what changed between any two versions",
        description="Added, removed, replaced and renamed files between two versions (not only neighbours). "
                    "Either side is a version label or an ISO date-time.",
        epilog="examples:\n  chorus-batch diff --from 20261001020000 --to 20261101020000 --csv > oct_to_nov.csv\n"
               "  chorus-batch diff --from 20261001020000 --to 20261101020000 --md5sum > new_since_oct.md5\n\n"
               + EXIT_CODES_HELP,
    )
    diff.add_argument("--from", dest="from_version", required=True, metavar="LABEL|ISO-TIME",
                      help="the version to compare from: a label, or an ISO date-time (the version current then)")
    diff.add_argument("--to", dest="to_version", metavar="LABEL|ISO-TIME", help="default: the latest version")
    output_flags(diff, " (of the files added, replaced or renamed, as they are in --to)")

    history = command(
        "history", help="every version of one file",
        description="Every recorded version of one file, oldest first: when it was valid, its MD5 and size, how it "
                    "began (added, replaced, renamed from) and ended (removed, replaced, renamed to).",
        epilog="example:\n  chorus-batch history 000123/Waveforms/Telemetry/901234/901234.hea   # a path as `files` prints it\n\n"
               + EXIT_CODES_HELP,
    )
    history.add_argument("path", help="site-relative path, as stored in the manifest (POSIX '/')")
    output_flags(history)

    report = command(
        "report", help="write a self-contained HTML data-quality report of a version",
        description="Counts per modality and change kind, persons, waveform sessions, sizes, duplicates, errors, "
                    "validation findings and what the version deleted or replaced; plots embedded as PNG.",
        epilog="example:\n  chorus-batch report --db site_manifest.sqlite --out report.html\n\n" + EXIT_CODES_HELP,
    )
    version_of_manifest(report)
    report.add_argument("--out", required=True, help="the HTML file to write (readable by its owner only); - for "
                                                      "standard output")

    review = command(
        "review", help="run the reviewer's notebook headless; the executed notebook is readable by its owner only",
        description="Executes notebooks/review.ipynb (the wheel ships it; needs papermill: pip install \".[notebook]\") on a "
                    "version and writes the executed notebook, owner-only; what its cells write is owner-only too.",
        epilog="example:\n  chorus-batch review --db site_manifest.sqlite --out review.ipynb\n\n" + EXIT_CODES_HELP,
    )
    version_of_manifest(review)
    review.add_argument("--compare-to", metavar="LABEL|ISO-TIME", help="default: the version before")
    review.add_argument("--out", required=True, help="the executed notebook (.ipynb) to write; - for standard output")

    unlock = command(
        "unlock", help="break the lock of a run that died on a manifest in Azure (az://)",
        description="A run on a manifest in Azure (--db az://...) holds a blob lease on it, renewed while the run "
                    "lives: a second run is refused, and a run that was killed lets it expire within a minute. "
                    "unlock says whose lease it is and since when, and breaks it at once; the run holding it can then "
                    "no longer upload. A local manifest's lock is released by the OS when its holder exits: nothing "
                    "to unlock.",
        epilog="example:\n  chorus-batch unlock --db az://chorus/site/manifest.sqlite --yes\n\n" + EXIT_CODES_HELP,
    )
    unlock.add_argument("--config", help="settings file (default: ./chorus.toml if present)")
    unlock.add_argument("--db", help="the manifest (default: from chorus.toml)")
    unlock.add_argument("--yes", action="store_true", help="do not ask (required when not on a terminal)")

    slurm = command(
        "slurm-script", help="print a Slurm batch script: a job array hashes shards of the site, one merge job commits",
        description="Print a bash script to submit as is with sbatch (or run with bash on a login node). It submits a "
                    "job array whose task K lists and hashes shard K of N into a staging folder (never writing the "
                    "manifest), and a merge job that starts once every shard succeeded (--dependency=afterok), "
                    "checks the shards, commits, validates and reports as a plain `run`, and writes its exit code to "
                    "STAGING/merge.exit. One log per task. The jobs run this interpreter "
                    f"({sys.executable}). `chorus-batch run --slurm` submits it and follows the jobs.",
        epilog="examples:\n"
               "  chorus-batch slurm-script --site /data/site --db /data/m.sqlite --shards 16 > nightly.sbatch && sbatch nightly.sbatch\n"
               "  chorus-batch slurm-script --config chorus.toml --shards 32 --cpus-per-task 8 --mem 16G --time 04:00:00 "
               "--partition batch --account chorus\n\n" + EXIT_CODES_HELP,
    )
    slurm.add_argument("--config", help="settings file (default: ./chorus.toml if present); the jobs read it")
    slurm.add_argument("--site", help="site root folder (default: from the config)")
    slurm.add_argument("--db", help=f"manifest file (default: from the config, else ./{DEFAULT_DB})")
    _slurm_flags(slurm)
    _slurm_flags(run, run=True)

    def central_flags(command: argparse.ArgumentParser) -> None:
        command.add_argument("--config", help="settings file (default: ./chorus.toml if present)")
        command.add_argument("--db", help=f"the manifest (default: from the config, else ./{DEFAULT_DB})")
        command.add_argument("--to", metavar="az://CONTAINER/", help="the site's central container (default: [central] "
                             "to of chorus.toml); signed in as [azure] and the environment say")

    up = command(
        "upload", help="send each version's added, replaced and renamed files to the central container, and record it",
        description="Send the files a version added, replaced or renamed to <to>/<version>/<path>, each with the "
                    "manifest's MD5 as its Content-MD5 (the bytes sent are hashed and must match it), and record every "
                    "file in the manifest's uploads ledger. By default every version not yet completely uploaded, "
                    "oldest first. Files are read from the roots the manifest records (--site: the site moved). A "
                    "file changed since its version was recorded is not sent (the next `run` records the change); "
                    "removed files are never deleted centrally. An interrupted upload resumes: confirmed files are not "
                    "sent again. A complete version is checked against the container's listing, and a copy of the "
                    "manifest goes to <version>/_manifest/manifest.sqlite.",
        epilog="examples:\n  chorus-batch upload --db site_manifest.sqlite --to az://mgh/ --dry-run\n"
               "  chorus-batch upload --config chorus.toml                  # [central] to = \"az://mgh/\"\n"
               "  chorus-batch upload --version 20261101020000 --modalities OMOP,Waveforms --workers 16\n"
               "  chorus-batch upload --script azcopy > upload.sh   # then: bash upload.sh; chorus-batch mark-uploaded "
               "--from-log upload.log\n\n" + EXIT_CODES_HELP,
    )
    central_flags(up)
    up.add_argument("--site", help="the site root, when it moved since the manifest recorded it")
    up.add_argument("--version", dest="version_label", metavar="LABEL", help="only this version")
    up.add_argument("--modalities", metavar="LIST", help="only these modalities, comma-separated (OMOP, Metadata, "
                    "Waveforms, Images, Other); a version is complete only when all of its files are sent")
    up.add_argument("--workers", type=_workers, help="files sent at once (default: [central] workers, 8)")
    up.add_argument("--dry-run", action="store_true", help="say what would be sent; send and write nothing")
    up.add_argument("--json", action="store_true", help="print the result as one JSON object")
    up.add_argument("--script", choices=("bash", "azcopy"), help="print a bash script of `az storage blob upload` "
                    "(bash) or `azcopy copy` (azcopy) commands instead of sending; record its log with mark-uploaded")

    ver = command(
        "verify", help="check the uploaded files against the central container",
        description="Check every file version the uploads ledger says was sent: the blob is there, has the manifest's "
                    "size, and its Content-MD5 is the manifest's MD5 (one listing per version). The uploader set that "
                    "Content-MD5, so only --download checks the bytes: every blob is read back and hashed. Results are "
                    "recorded in the ledger; mismatches and missing blobs are listed and make the exit code 1, and so do "
                    "files of a verified version not uploaded yet (an upload interrupted, or --modalities): the centre "
                    "holds only a part of that version.",
        epilog="examples:\n  chorus-batch verify --to az://mgh/                     # the latest uploaded version\n"
               "  chorus-batch verify --all --download --workers 16\n\n" + EXIT_CODES_HELP,
    )
    central_flags(ver)
    which = ver.add_mutually_exclusive_group()
    which.add_argument("--version", dest="version_label", metavar="LABEL", help="this version (default: the latest uploaded)")
    which.add_argument("--all", action="store_true", help="every version with uploaded files")
    ver.add_argument("--download", action="store_true", help="read every blob back and hash it (the bytes, not only "
                     "the recorded Content-MD5)")
    ver.add_argument("--workers", type=_workers, help="blobs read at once with --download (default: [central] workers, 8)")
    ver.add_argument("--json", action="store_true", help="print the result as one JSON object")

    mark = command(
        "mark-uploaded", help="record in the ledger what an `upload --script` run sent, once the centre confirms it",
        description="Read the log an `upload --script` script wrote (one line per file it sent), check each of those "
                    "blobs at the central container (there, with the manifest's size and MD5 as Content-MD5), and "
                    "record the confirmed ones in the uploads ledger as `upload` would. Lines of blobs that do not "
                    "match are listed and not recorded.",
        epilog="example:\n  chorus-batch upload --script bash > upload.sh && bash upload.sh && "
               "chorus-batch mark-uploaded --from-log upload.log\n\n" + EXIT_CODES_HELP,
    )
    central_flags(mark)
    mark.add_argument("--from-log", required=True, metavar="LOG", help="the log the script wrote")

    imp = command(
        "import-journal", help="start a manifest from a chorus-upload journal: its versions, file histories and upload marks",
        description="Build a NEW manifest from a chorus-upload journal (journal.db, either of its schemas): every "
                    "upstream version becomes a version of this manifest, in order and with its label, its tree rebuilt "
                    "from the journal's validity intervals and its change set computed by chorus-batch's own diff "
                    "(renames included); person ids and classification come from the paths. The journal's MD5s are "
                    "kept, so the next `run` hashes nothing upstream hashed; its upload marks go into the uploads "
                    "ledger as imported (not verified) for the central container, so `upload` sends only what upstream "
                    "had not. What cannot be mapped (impossible rows, paths no pattern fits, marks without their file) "
                    "is listed and recorded as findings of the first version. The journal is only read; an existing "
                    "manifest is never written over.",
        epilog="examples:\n"
               "  chorus-batch import-journal /data/journal.db --db chorus_manifest.sqlite --site /data/site --to az://mgh/\n"
               "  chorus-batch import-journal journal.db --db new.sqlite --dry-run    # what it would import\n\n"
               + EXIT_CODES_HELP,
    )
    imp.add_argument("journal", metavar="JOURNAL", help="chorus-upload's journal.db (a local path, or an az:// URL)")
    imp.add_argument("--db", help=f"the manifest to create; must not exist (default: from the config, else ./{DEFAULT_DB})")
    imp.add_argument("--site", help="the site's root folder as it is now: recorded as the versions' root, and checked "
                     "against the import as `status` would (what the next run will commit)")
    imp.add_argument("--to", metavar="az://CONTAINER/", help="the central container the upload marks are for, as "
                     "`upload --to` will name it (default: [central] to of chorus.toml, else upstream's central_path "
                     "when it is an az:// URL)")
    imp.add_argument("--config", help="settings file (default: ./chorus.toml if present): [site], [central] to, [patterns]")
    imp.add_argument("--dry-run", action="store_true", help="build the manifest in a temporary file, report, and remove it")
    imp.add_argument("--json", action="store_true", help="print the result as one JSON object")

    cfg = command(
        "import-config", help="convert a chorus-upload config.toml into a chorus.toml",
        description="Read the config.toml of chorus-upload (the older CHoRUS upload tool) and print the equivalent "
                    "chorus.toml: the site's paths ([site] root, [site.roots]), the journaling mode ([run] mode), "
                    "the central container ([central] to) and how Azure is signed in to ([azure]). Secrets are never "
                    "copied: [azure] names the environment variables that take them, and a warning names each secret "
                    "found (masked) so that it can be rotated. What cannot be translated (path patterns, versioned "
                    "folders, a local central path, unknown keys) is a warning on stderr and a comment in the text. "
                    "The journal itself is imported with `chorus-batch import-journal`.",
        epilog="examples:\n  chorus-batch import-config /opt/chorus-upload/config.toml     # prints it: read it first\n"
               "  chorus-batch import-config config.toml --out chorus.toml     # written readable by its owner only\n\n"
               "here exit code 1 means: converted, with warnings (secrets not copied, settings not translated)\n\n"
               + EXIT_CODES_HELP,
    )
    cfg.add_argument("config_file", metavar="CONFIG", help="chorus-upload's config.toml")
    cfg.add_argument("--out", metavar="FILE", help="write the chorus.toml to FILE (mode 0600) instead of stdout "
                                                     "(- : stdout)")
    cfg.add_argument("--force", action="store_true", help="with --out: replace FILE if it exists")
    for name in DEMO_READERS:  # what `run --demo` suggests next
        sub.choices[name].add_argument(
            "--demo", action="store_true",
            help=f"read the demo's manifest, ./{DEMO_DB} as `run --demo` writes it (or --db)"
                 + ("; its site is the demo site" if name in ("status", "validate", "registry") else ""))
    return parser


def _site_flags(parser: argparse.ArgumentParser) -> None:
    """What `run` and `status` scan and check, and how: the site, the manifest, the mode and the exclusions."""
    parser.add_argument("--config", help="settings file (default: ./chorus.toml if present)")
    parser.add_argument("--site", help="site root folder (or an fsspec URL); replaces [site] root of the config, "
                                       "whose [site.roots] still apply")
    parser.add_argument("--db", help=f"manifest file (default: from the config, else ./{DEFAULT_DB})")
    parser.add_argument("--mode", choices=["full", "append"], help="full: the tree is the whole site (missing files are removed); "
                        "append: only add/replace, remove only paths in --delete-list")
    parser.add_argument("--delete-list", help="append mode: file of site-relative paths to mark removed, one per line")
    parser.add_argument("--workers", type=_workers, help="hashing and listing processes (default: the CPUs this process may use, at most 16)")
    # on/off flags in both senses (--follow-symlinks / --no-follow-symlinks): a flag overrides chorus.toml either way
    parser.add_argument("--follow-symlinks", action=_SwitchOnce, default=None,
                        help="follow symbolic links (default: follow_symlinks in [run], else record and skip them)")
    parser.add_argument("--max-delete", type=_checked("parse_max_delete"), metavar="PERCENT|COUNT|all",
                        help="refuse a version that removes more of the previous version's files than this: a "
                             "share of them (50%%, the default), a number of files (1000), or all (no limit); a root "
                             "that lists no files at all is refused unless 'all'")
    parser.add_argument("--cloud-md5", choices=["stored-or-download", "download", "stored-only"],
                        help="cloud roots (az://, s3://): where a new or changed file's MD5 comes from. stored-or-download "
                             "(default): the storage's own MD5 (Azure Content-MD5, S3 single-part ETag), else download and "
                             "hash; download: always download; stored-only: never download, a file without a stored MD5 "
                             "is recorded without one (unverifiable, exit code 1)")
    parser.add_argument("--exclude", action="append", metavar="GLOB",
                        help="leave out files matching GLOB: neither hashed nor recorded, only counted (repeatable; "
                             "added to exclude in [run]). Without '/' it matches the file name (*.tmp), with '/' the "
                             "site-relative path (scratch/*); a file recorded before is removed in the next version")
    parser.add_argument("--default-excludes", action=_SwitchOnce, default=None,
                        help="--no-default-excludes: also track the OS and editor junk that is excluded by default "
                             "(.DS_Store, Thumbs.db, desktop.ini, ._*, ~$*, .~lock.*#, $RECYCLE.BIN/, Vim's .*.swp, "
                             "Emacs' .#* and #*#, backups *~, ...) (default: default_excludes in [run], else "
                             "excluded)")
    parser.add_argument("--validate", action=_SwitchOnce, default=None,
                        help="--no-validate: skip the checks against the CHoRUS procedures (see `chorus-batch validate "
                             "--help`) (default: validate in [run], else checked)")


def _slurm_flags(parser: argparse.ArgumentParser, *, run: bool = False) -> None:
    """The job array's and merge job's options: `slurm-script` and `run --slurm`."""
    from . import slurm  # no third-party imports: help stays instant

    def checked(check):
        def parse(text: str) -> str:
            try:
                return check(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        return parse

    group = parser.add_argument_group("Slurm (a job array of shards and a merge job)")
    if run:
        group.add_argument("--slurm", action="store_true",
                           help="submit the job array and the merge job (see `chorus-batch slurm-script --help`), "
                                "follow them, and exit with the merge's exit code; Ctrl-C cancels them")
    group.add_argument("--shards", type=_positive_int, default=None,
                       help=f"tasks of the job array, each lists and hashes one shard (default {slurm.DEFAULT_SHARDS})")
    group.add_argument("--cpus-per-task", type=_positive_int, default=None,
                       help=f"CPUs of each job, also its --workers (default {slurm.DEFAULT_CPUS})")
    group.add_argument("--mem", type=checked(slurm.check_mem), help="memory of each job, as sbatch --mem (e.g. 16G; 0: all of a node's memory, as Slurm reads it)")
    group.add_argument("--time", type=checked(slurm.check_time), help="time limit of each job, as sbatch --time (e.g. 04:00:00)")
    group.add_argument("--partition", type=checked(slurm.check_name), help="sbatch --partition")
    group.add_argument("--account", type=checked(slurm.check_name), help="sbatch --account")
    try:  # `run --staging` may be there already (a shard's staging folder): the same meaning
        group.add_argument("--staging", metavar="DIR",
                           help="folder for the shards' results, on a file system every node reaches "
                                "(default: a new <db>.staging/<UTC time> each submission, owner-only)")
    except argparse.ArgumentError:
        pass


# ----------------------------------------------------------------------------- commands


@dataclass
class _Target:
    """What a command works on, resolved once from the flags, chorus.toml and the defaults."""

    config: Any  # config.ConfigFile
    site: str | None  # --site, else [site] root; None when neither is given
    db: str
    db_given: bool  # --db or [manifest] db
    demo: bool  # `run --demo`: the demo site and its own manifest


def _resolve(args: argparse.Namespace) -> _Target:
    """The one place that decides the manifest, the site and the demo defaults for every command; a local manifest
    this user cannot reach (a folder on its way it may not enter, a file it may not read) is said here, for every
    command, not as a PermissionError from the first `exists()` of whichever command it was."""
    target = _resolve_target(args)
    if "://" not in target.db:
        from .fsutil import require_reachable

        require_reachable(target.db)
    return target


def _resolve_target(args: argparse.Namespace) -> _Target:
    from .config import ConfigFile, load_config
    from .config_file import config_path
    from .urls import check_manifest_location

    if getattr(args, "db", None):
        check_manifest_location(args.db, "--db")
        if "://" not in args.db:  # a '~' no shell expanded (a cron line, a unit file): as --site and [manifest] db read it
            from .urls import expand_home

            args.db = expand_home(args.db, "--db")
    if getattr(args, "demo", False):  # `run --demo` (and the commands that read what it wrote): the demo site
        given = [flag for flag in ("site", "config", "merge", "shard", "staging", "slurm") if getattr(args, flag, None)]
        if given:
            flags = ", ".join("--" + flag for flag in given)
            doing = "runs on" if args.command == "run" else "reads the manifest of"
            raise UsageError(f"--demo {doing} the demo site; it does not go with {flags}", where=f"{args.command} --demo",
                             fix=f"leave out --demo to work on your site, or leave out {flags} for the demo")
        db = args.db or DEMO_DB
        if args.command != "run" and not Path(db).exists():
            raise UsageError(f"no demo manifest at {Path(db).resolve()}", where="--demo" + (" --db" if args.db else ""),
                             fix="run `chorus-batch run --demo` in this folder first (it writes "
                                 f"./{DEMO_DB}), or pass --db with the manifest it wrote")
        return _Target(config=ConfigFile(), site=None, db=db, db_given=bool(args.db), demo=True)
    if getattr(args, "db", None) == "":  # (an unset shell variable): never quietly the default manifest
        raise UsageError("--db is empty", where="--db", fix="give the manifest's path, or leave out --db for the default")
    path = config_path(getattr(args, "config", None))
    config = load_config(path) if path else ConfigFile()
    args.config_read = config  # (main names the file and line of a setting an error names: ConfigFile.where_written)
    site = getattr(args, "site", None) or config.site.root
    if getattr(args, "site", None):  # before anything: upload opened its --site only when it had files to send
        from .config import SITE_ROOT
        from .urls import check_location

        check_location(args.site, SITE_ROOT)
    db_given = bool(args.db or config.manifest.db)
    if config.manifest.db and not args.db:
        check_manifest_location(config.manifest.db, "[manifest] db")
    if db_given:
        db = args.db or config.manifest.db
    elif args.command in ("run", "slurm-script", "import-journal") or site is not None:  # a site's manifest, never the demo's
        db = DEFAULT_DB
    else:  # read the site's manifest here, else the demo's (`run --demo` writes that one), and say which
        db = DEFAULT_DB if Path(DEFAULT_DB).exists() or not Path(DEMO_DB).exists() else DEMO_DB
        if db == DEMO_DB:
            print(f"chorus-batch: reading the demo's manifest {Path(DEMO_DB).resolve()} (no --db, no chorus.toml and "
                  f"no ./{DEFAULT_DB} here)", file=sys.stderr)
            # status checks the demo site against it, as `status --demo` does (it said "no site given")
            return _Target(config=config, site=None, db=db, db_given=False, demo=True)
    return _Target(config=config, site=site, db=db, db_given=db_given, demo=False)


def _run_settings(args: argparse.Namespace, target: _Target):
    """RunSettings from the command line over chorus.toml (flags a command lacks count as not given)."""
    from .config import RunSettings
    from .errors import SettingError

    config = target.config
    site = target.site or (str(demo_site()) if target.demo else None)
    if site is None:
        raise UsageError("no site given: chorus-batch needs to know which folder to track",
                         where="--site / [site] root of chorus.toml",
                         fix="pass --site DIR (and --db MANIFEST), or put a chorus.toml with [site] root here (or pass "
                             "--config FILE); to try chorus-batch on its demo site: chorus-batch run --demo")
    flag = lambda name: getattr(args, name, None)  # noqa: E731
    given = flag("site")
    if given and config.site.roots and not target.demo and given != config.site.root and (
            "://" in given or os.path.abspath(given) != config.site.root):  # (a site given by hand took them, unsaid)
        logging.getLogger("chorus_batch").info(
            "--site replaces [site] root of the config; its [site.roots] still apply ("
            + ", ".join(f"{modality}: {location}" for modality, location in config.site.roots.items())
            + "): to run without them, give a --config without [site.roots]")
    try:
        settings = RunSettings(
            site=site, site_name=config.site.name or ("demo" if target.demo else None), roots=config.site.roots,
            db=target.db, mode=flag("mode") or config.run.mode, delete_list=flag("delete_list"),
            parquet=flag("parquet") or config.manifest.parquet, workers=flag("workers") or config.run.workers,
            rehash=bool(flag("rehash")), dry_run=bool(flag("dry_run")),
            follow_symlinks=config.run.follow_symlinks if flag("follow_symlinks") is None else flag("follow_symlinks"),
            racy_window_s=config.run.racy_window_s, patterns=config.patterns, version_label=flag("version_label"),
            validate_site=config.run.validate_site if flag("validate") is None else flag("validate"),
            max_delete=flag("max_delete") or config.run.max_delete,
            verify_sample=config.run.verify_sample if flag("verify_sample") is None else flag("verify_sample"),
            verify_max_bytes=flag("verify_max_bytes") or config.run.verify_max_bytes, cloud=config.cloud,
            cloud_md5=flag("cloud_md5") or config.run.cloud_md5,
            shard=flag("shard"), staging=flag("staging"), merge=flag("merge"),
            exclude=list(dict.fromkeys([*config.run.exclude, *(flag("exclude") or [])])),
            default_excludes=config.run.default_excludes if flag("default_excludes") is None else flag("default_excludes"),
            arguments=(_listing_arguments(args) if args.command == "run" and (flag("staging") or flag("merge"))
                       else None),
        )
    except SettingError as exc:  # a flag's value out of range (chorus.toml's own are checked as it is read)
        option = "--" + {"validate_site": "validate"}.get(exc.setting, exc.setting).replace("_", "-")
        raise UsageError(f"invalid {option}: {exc.problem}", where=f"{option} (or [run] {exc.setting} in chorus.toml)",
                         fix=f"see `chorus-batch {args.command} --help` for the values it takes") from None
    _log_settings(args, target, settings)
    return settings


# The [run] settings a command line overrides, as (RunSettings field, flag's dest, [run] key)
_OVERRIDDEN = (("mode", "mode", "mode"), ("workers", "workers", "workers"), ("max_delete", "max_delete", "max_delete"),
               ("verify_sample", "verify_sample", "verify_sample"),
               ("verify_max_bytes", "verify_max_bytes", "verify_max_bytes"), ("cloud_md5", "cloud_md5", "cloud_md5"),
               ("validate_site", "validate", "validate"), ("follow_symlinks", "follow_symlinks", "follow_symlinks"),
               ("default_excludes", "default_excludes", "default_excludes"))


def _log_settings(args: argparse.Namespace, target: _Target, settings) -> None:
    """Under -v: the config file read and each setting a run goes by, with where it came from (the command line,
    chorus.toml or the default): nothing said which file was read, nor whether --workers or [run] workers won."""
    log = logging.getLogger("chorus_batch")
    if not log.isEnabledFor(logging.DEBUG):
        return
    from .config_file import config_path

    path = None if target.demo else config_path(getattr(args, "config", None))
    given = target.config.run.model_fields_set

    def source(dest: str, key: str) -> str:
        if getattr(args, dest, None) is not None:  # (an on/off flag: the sense given)
            return ("--no-" if getattr(args, dest) is False else "--") + dest.replace("_", "-")
        return f"[run] {key}" if key in given or (key == "validate" and "validate_site" in given) else "default"

    def shown(value: object) -> str:  # as chorus.toml writes it
        return str(value).lower() if isinstance(value, bool) else str(value)

    words = [f"{key} {shown(getattr(settings, field))} ({source(dest, key)})" for field, dest, key in _OVERRIDDEN]
    # (the globs of both: [run] exclude and --exclude add up; it was said without either, the one setting unsourced)
    excluded = " and ".join(name for name, globs in (("[run] exclude", target.config.run.exclude),
                                                      ("--exclude", getattr(args, "exclude", None))) if globs)
    log.debug(f"settings: config {path or 'none'}; site {settings.site}; manifest {settings.db}; " + "; ".join(words)
              + (f"; exclude {', '.join(settings.exclude)} ({excluded})" if settings.exclude else ""))


# `run` flags that do not shape a listing: left out of the arguments a shard records and reruns are told with
_NOT_LISTING = ("help", "shard", "staging", "merge", "json", "quiet", "verbose", "slurm", "dry_run", "demo", "mode",
                "delete_list", "parquet", "version_label", "max_delete")
_PATH_FLAGS = ("config", "site", "db")


def _listing_arguments(args: argparse.Namespace) -> list[str]:
    """The `run` flags given that shape a listing (--config, also ./chorus.toml read by default, --site, --db,
    --exclude, --workers, ...), as words: paths absolute, secrets masked (urls.redact). A shard records them in
    its scan.json; the merge's messages rerun a shard with them."""
    from .config_file import config_path
    from .urls import redact
    from .slurm import _absolute

    words: list[str] = []
    for action in _parser().commands["run"]._actions:  # type: ignore[attr-defined]
        value = config_path(args.config) if action.dest == "config" else getattr(args, action.dest, None)
        if (not action.option_strings or action.dest in _NOT_LISTING or action.dest in _SLURM_ONLY or value is None
                or value == action.default):
            continue
        option = max(action.option_strings, key=len)
        if isinstance(action, argparse.BooleanOptionalAction):  # (--x, or --no-x: the one given)
            words.append(action.option_strings[0 if value else 1])
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            words.append(option)
        elif isinstance(action, argparse._AppendAction):
            words += [word for item in value for word in (option, str(item))]
        else:
            words += [option, _absolute(value) if action.dest in _PATH_FLAGS else str(value)]
    return redact(words)


def _slurm_script(args: argparse.Namespace, command: str) -> tuple[str, str]:
    """The Slurm script for `slurm-script` and `run --slurm`, from the flags and chorus.toml; and its manifest."""
    from .config import named_roots
    from .config_file import config_path
    from .slurm import DEFAULT_CPUS, DEFAULT_SHARDS, slurm_script

    from .urls import check_location

    target = _resolve(args)
    config = config_path(args.config)
    if config is not None and not Path(config).is_file():  # read now, and again by every job, hours later elsewhere
        raise UsageError(f"--config {config} is no file (a pipe, such as <(envsubst < chorus.toml.in)?): the script's "
                         "jobs read the config again when they start, on other nodes", where="--config",
                         fix="write it to a file on the file system every node reaches (envsubst < chorus.toml.in > "
                             "chorus.toml) and pass that")
    roots = [(location, what) for location, what, _ in named_roots(target.site, target.config.site.roots)]
    for location, what in roots:
        if location:
            check_location(location, what)  # (credentials in a URL would be written into the script)
    if target.site is None:  # every job's `run` needs it: [site.roots] alone made a script whose every task failed
        extra = (" ([site.roots] adds a folder per modality, it does not replace the site root)"
                 if target.config.site.roots else "")
        raise UsageError(f"`{command}` needs the site root{extra}; no script was made and nothing was submitted",
                         where="--site / [site] root",
                         fix="pass --site DIR (and --db MANIFEST), or --config chorus.toml with [site] root")
    if target.config.run.mode != "full":  # every shard refused it tonight ("--mode append do not go with --shard")
        raise UsageError(f"[run] mode = \"{target.config.run.mode}\" in {config}: a Slurm run lists the whole site in "
                         "shards (full mode), and every shard would refuse append mode; no script was made and nothing "
                         "was submitted", where="[run] mode",
                         fix=f"run append deliveries on one node (chorus-batch run --config {command_word(str(config))}, "
                             "without Slurm), or give the Slurm run a chorus.toml with mode = \"full\" (the default)")
    if "://" not in target.db:  # what every shard would refuse tonight (a folder, another program's database, a
        # newer release's manifest), refused now; an older schema is upgraded by the script before it submits
        from .store import Manifest

        Manifest(target.db).schema_on_disk()
    from .fsutil import check_outside_roots

    check_outside_roots(roots, [(path, where, name) for path, where, name in (
        (target.db, "--db / [manifest] db", "the manifest"),
        (getattr(args, "staging", None), "--staging", "the shards' staging folder")) if path and "://" not in path])
    script = slurm_script(site=target.site, db=target.db, shards=args.shards or DEFAULT_SHARDS,
                          staging=getattr(args, "staging", None), cpus_per_task=args.cpus_per_task or DEFAULT_CPUS,
                          mem=args.mem, time=args.time, partition=args.partition, account=args.account, config=config,
                          python=sys.executable)
    if "://" not in target.db and not Path(target.db).exists():  # (after the script's own checks of its paths)
        # A manifest folder that is not there (an unmounted disk, a mistyped --db): `run --slurm` said "cannot create
        # the lock ... make the folder writable", and the script's mkdir -p of <db>.staging made the folder, so the
        # merge started a new manifest there, as a plain run refuses to
        from .store.manifest import require_folder

        require_folder(Path(os.path.abspath(target.db)))
    # A local root that is not there now fails every shard tonight: said here, before anything is submitted
    # (a cloud root is left to the shards: checking it here would need the cluster's credentials).
    from .sources import open_source

    for location, what in roots:
        if location and ("://" not in location or location.startswith("file://")):
            open_source(location, what=what).check()
    _say_shards_that_list_nothing(roots, args.shards or DEFAULT_SHARDS)
    return script, target.db


def _say_shards_that_list_nothing(roots: list, shards: int) -> None:
    """A warning when most of the --shards would list nothing: a shard is a range of the 4096 buckets the site's
    top-level (person) folders hash to, so `--shards 1000` on a site of 10 person folders queued 990 jobs that each
    started Python, listed nothing and wrote an empty shard (minutes on a busy cluster, for a one-second job)."""
    from .coverage import BUCKETS, top_bucket

    if shards <= 1 or len(roots) != 1 or not roots[0][0] or "://" in roots[0][0]:
        return  # ([site.roots]: folders per modality, each split alike; a cloud root: not listed from here)
    try:
        with os.scandir(roots[0][0]) as entries:
            tops = [entry.name for entry in entries]
    except OSError:
        return
    if not tops:  # (an empty site root: not mounted? the shards and the merge say so)
        return
    used = {top_bucket(top) * shards // BUCKETS for top in tops}
    if shards - len(used) >= 64 and len(used) * 2 <= shards:  # (a few empty of the default 8 on a small site: quiet)
        print(f"chorus-batch: warning: --shards {shards}: the site's {len(tops)} top-level folders fall in "
              f"{len(used)} of the {shards} shards (each shard is a range of the {BUCKETS} buckets person folders "
              f"hash to); the other {shards - len(used)} jobs list nothing, yet each is queued and starts Python: "
              f"give --shards {max(len(tops), 1)} or fewer", file=sys.stderr)


def _write_script(text: str) -> None:
    """A shell script on standard output with '\n' line ends whatever the system: Windows' standard output writes
    each as '\r\n', and bash (Git Bash, WSL) reads the '\r' as part of every line ($'\r': command not found)."""
    from .fsutil import write_stdout

    with contextlib.suppress(AttributeError, ValueError):  # (a caller's own stream: left as it is)
        sys.stdout.reconfigure(newline="\n")
    write_stdout(text)  # (redirected: UTF-8 bytes, whatever the code page: the paths in it as the site names them)


def cmd_slurm_script(args: argparse.Namespace, argv: list[str]) -> int:
    _write_script(_slurm_script(args, "slurm-script")[0])
    return 0


# `run` flags that --slurm does not pass on: the jobs take their settings from chorus.toml (--config).
_NOT_WITH_SLURM = ("mode", "delete_list", "parquet", "workers", "rehash", "dry_run", "json", "version_label",
                   "follow_symlinks", "max_delete", "verify_sample", "verify_max_bytes", "cloud_md5", "validate",
                   "shard", "merge", "exclude", "default_excludes")
# ... and those chorus.toml has no setting for: what to do instead
_BY_HAND = "run the shards and the merge yourself (`chorus-batch run --shard K/N --staging DIR` each, then `chorus-batch run --merge DIR`)"
_NO_CONFIG_SETTING = {
    "workers": "--cpus-per-task C is each job's --workers",
    "mode": "a Slurm run is a full run of the whole site; run append deliveries on one node (without --slurm)",
    "dry_run": "`chorus-batch status` (on one node) shows what a run would commit and writes nothing",
    "json": "the merge's summary is in its log; `chorus-batch versions --json` and `changes --json` read the version",
    "version_label": f"the merge's alone: {_BY_HAND} with it",
    "delete_list": f"the merge's alone: {_BY_HAND} with it",
    "rehash": f"the shards' alone: {_BY_HAND} with it",
    "shard": f"the jobs run --shard and --merge themselves; without --slurm, {_BY_HAND}",
    "merge": f"the jobs run --shard and --merge themselves; without --slurm, {_BY_HAND}",
}
_SLURM_ONLY = ("shards", "cpus_per_task", "mem", "time", "partition", "account")


def cmd_run_slurm(args: argparse.Namespace, argv: list[str]) -> int:
    from .slurm import submit_and_follow

    on_off = ("follow_symlinks", "validate", "default_excludes")  # (--x / --no-x: either is given)
    given = [name for name in _NOT_WITH_SLURM
             if getattr(args, name, None) not in (None, False) or (name in on_off and getattr(args, name, None) is False)]
    if given:
        def flag(name: str) -> str:
            off = name in on_off and getattr(args, name) is False
            return "--" + ("no-" if off else "") + {"version_label": "version"}.get(name, name).replace("_", "-")

        def flags(names: list[str]) -> str:
            return ", ".join(flag(name) for name in names)

        def setting(name: str) -> str:
            if name in on_off:
                return f"[run] {name} = {'false' if getattr(args, name) is False else 'true'}"
            return {"parquet": "[manifest] parquet"}.get(name, f"[run] {name}")

        # "set them in chorus.toml" was said of all of them, also of those it has no setting for (--dry-run, --version)
        in_config = [name for name in given if name not in _NO_CONFIG_SETTING]
        fixes = ([f"set {flags(in_config)} in chorus.toml as " + ", ".join(setting(name) for name in in_config)
                  + " and pass --config: every job reads it"] if in_config else [])
        fixes += [f"{flag(name)}: {_NO_CONFIG_SETTING[name]}" for name in given if name in _NO_CONFIG_SETTING]
        raise UsageError(f"run --slurm does not pass on {flags(given)}", where="run --slurm", fix="; ".join(fixes))
    script, db = _slurm_script(args, "run --slurm")
    return submit_and_follow(script, out=lambda line: print(line, flush=True), db=db, argv=argv)


# What a shard never does (it lists and hashes; the merge commits) and what a merge never does (the shards hash): given
# on the command line to the other side they were dropped without a word (chorus.toml's values serve both sides)
_MERGE_ONLY = ("parquet", "version_label", "max_delete", "delete_list")
_SHARD_ONLY = ("rehash",)


def _refuse_flags_of_the_other_side(args: argparse.Namespace, settings) -> None:
    def given(names: tuple[str, ...]) -> str:
        options = {"version_label": "--version"}
        return ", ".join(options.get(name, "--" + name.replace("_", "-")) for name in names if getattr(args, name, None))

    if settings.shard is not None or settings.staging is not None:
        flags = given(_MERGE_ONLY)
        if flags:
            raise UsageError(f"{flags} would do nothing in a shard: a shard only lists and hashes, the merge commits",
                             where="run --shard", fix=f"give {flags} to the merge (chorus-batch run --merge DIR ...)")
    elif settings.merge is not None:
        flags = given(_SHARD_ONLY)
        if flags:
            raise UsageError(f"{flags} would do nothing in a merge: the shards have hashed already", where="run --merge",
                             fix=f"run the shards again with {flags}, then merge")


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    if getattr(args, "slurm", False):
        return cmd_run_slurm(args, argv)
    given = [name for name in _SLURM_ONLY if getattr(args, name, None) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} {'goes' if len(given) == 1 else 'go'} only with --slurm", where="run", fix="add --slurm, or leave them out")
    from . import faults

    target = _resolve(args)
    settings = _run_settings(args, target)
    _refuse_flags_of_the_other_side(args, settings)
    result = None
    try:  # from the run's return on, a signal or failure names the version it committed
        with _early_listing(settings):  # walking while the libraries load
            if settings.shard is not None or settings.staging is not None:
                return _run_shard(args, settings)
            faults.pause("early-listing")
            from .pipeline import run
            from .progress import Progress

            def summary(result) -> None:
                faults.pause("summary")  # (tests: a signal after the run, while its summary is printed)
                with _kept_exit_code(int(result.exit_code)):  # (flushed: a failure of its last bytes is this run's)
                    _print_run(args, result, settings, demo=target.demo)

            # The summary is written by the run, before `runs` records its end: a summary lost (a full disk, a
            # reader that left) is recorded as the run's outcome (its exit code), not as a success
            # (refuse_empty_first: a first run whose roots list no file to record is refused, exit 5, as once a
            # version exists; validate --site's temporary manifest is not: an empty folder is "nothing to check")
            result = run(settings, argv=argv, progress=Progress(quiet=args.quiet), report=summary, refuse_empty_first=True)
            faults.pause("run-returned")  # (tests: a signal as the early listing is shut down, the version committed)
        if not result.reported:  # (a dry run; a manifest in Azure, whose summary names it once uploaded back)
            summary(result)
        _say_summary_lost(result)
    except BrokenPipeError as exc:  # the reader left (`| head`): quiet, the run's own exit code, and what it committed
        _say_summary_lost(result, getattr(exc, "outcome", None))
        raise
    except Exception as exc:  # the summary is lost, not the version: the message says which stands
        if result is not None and result.label:
            shows = shlex.join(["chorus-batch", "changes", "--db", str(result.db), "--version", result.label])  # (anywhere)
            exc.committed, exc.outcome = result.label, (f"version {result.label} was committed to {result.db}; "  # type: ignore[attr-defined]
                                                        f"only this summary was not written (`{shows}` shows it)")
        elif result is not None and not result.dry_run and result.refused is None:
            # (a cron log is read for "did it commit?": said, not "what the command did before stands")
            kept = (f"version {result.previous_label} stays the latest" if result.previous_label
                    else "the manifest holds no version yet")
            exc.outcome = f"nothing was committed (no changes to commit); {kept}; only this summary was not written"  # type: ignore[attr-defined]
        raise
    except (KeyboardInterrupt, Stopped) as exc:  # (main says "nothing was committed" of a signal without it)
        if result is not None and result.label:
            exc.committed = result.label  # type: ignore[union-attr]
        raise
    _say_refused(result)
    return int(result.exit_code)


def _say_summary_lost(result, outcome: str | None = None) -> None:
    """A run whose summary went nowhere (standard output closed, `>&-`, as cron or a service may start it) or was cut
    by a reader that left (`run | head -1`) keeps its own exit code (the README says why: the output is not the
    run's product, the version is), but says on standard error what it committed: it said nothing, and `runs` and the
    exit code alone could not tell a log reader whether a version was made."""
    if outcome is None:
        if result is None or getattr(sys.stdout, "_stream", True) is not None:  # (stdout open: the summary said it)
            return
        outcome = ("standard output is closed: the run's summary was not written; "
                   + (f"version {result.label} was committed to {result.db}" if result.label
                      else "nothing was committed (no changes to commit)" if not result.dry_run and result.refused is None
                      else "nothing was committed"))
    else:
        outcome = "the reader of standard output left before the run's summary was all written; " + outcome
    with contextlib.suppress(OSError, ValueError):  # (stderr gone too: the exit code says what it can)
        print(shown(f"chorus-batch: note: {outcome}"), file=sys.stderr)


def _print_run(args: argparse.Namespace, result, settings, *, demo: bool) -> None:
    from .report import changes_text, status_dict, summary_dict, summary_text

    if args.json:
        print(json.dumps(status_dict(result) if result.dry_run else summary_dict(result), indent=2))
    else:
        print(summary_text(result, findings_more=None if result.dry_run else _findings_command(args, result)))
        if result.dry_run:  # (the same command with --json: a bare `status` lacks the run's --site, --config, --mode...)
            print("\n" + changes_text(result, limit=DRY_RUN_LIMIT, more="--json lists them all"))
        if args.verbose:
            from .pipeline import commit_stage_words

            said = {"commit": commit_stage_words(result.dry_run, result.label, result.refused is not None)}
            print("time by stage: " + ", ".join(f"{said.get(k) or stage_words(k)} {v:.3f} s"
                                                for k, v in result.timings.items()))
        if demo:
            db = "" if args.db is None else f" --db {command_word(args.db)}"
            print(f"\nThis was the demo site ({settings.site}); its manifest is {Path(settings.db).resolve()}.\n"
                  f"Look at it (from this folder) with: chorus-batch versions --demo{db}, chorus-batch files --demo{db}, "
                  f"chorus-batch status --demo{db}, chorus-batch report --demo{db} --out report.html\n"
                  "Point chorus-batch at a real site with: chorus-batch run --site /path/to/site --db /path/to/manifest.sqlite "
                  "(or a chorus.toml, see README).")


def _findings_command(args: argparse.Namespace, result) -> str:
    """What lists every finding of the version a run checked, as a command that works pasted in any folder (a cron
    job's log read from the home folder): `validate --json` with the run's manifest, and its config file or site,
    never a bare `chorus-batch validate --json`, which reads ./chorus.toml or ./chorus_manifest.sqlite of wherever
    it is pasted."""
    from .config_file import config_path

    db = str(result.db)
    if "://" in db:  # (validate works on a local manifest only; status reads this one as the run did)
        return "`chorus-batch status --json`, with this run's options, lists them all"
    words = ["chorus-batch", "validate"]
    config = None if getattr(args, "demo", False) else config_path(getattr(args, "config", None))
    if getattr(args, "demo", False):
        words.append("--demo")
    elif config is not None and Path(config).is_file():  # (not a `--config <(envsubst ...)` pipe, gone by now)
        words += ["--config", str(Path(config).resolve())]
    elif getattr(args, "site", None):
        words += ["--site", str(result.site)]
    return shlex.join([*words, "--db", str(Path(db).resolve()), "--json"]) + " lists them all"


def cmd_status(args: argparse.Namespace, argv: list[str]) -> int:
    target = _resolve(args)
    settings = _run_settings(args, target)
    with _early_listing(settings, "status"):
        from .pipeline import status
        from .progress import Progress

        # (a closed stdout is refused once the site and its roots were checked, before the listing (pipeline's
        # work_starts): `status --site nosuchdir >&-` is the mistyped site's usage error, exit 2, not the closed output's 3)
        result = status(settings, argv=argv, progress=Progress(quiet=args.quiet), refuse_empty_first=True)
    from .report import findings_text, status_csv, status_dict, status_text

    with _kept_exit_code(int(result.exit_code)):
        if args.json:
            print(json.dumps(status_dict(result), indent=2))
        elif args.csv:
            _print_csv(status_csv(result))
            for line in findings_text(result.findings, examples=0, more="chorus-batch status --json lists them"):
                print(line, file=sys.stderr)
        else:
            print(status_text(result, limit=None if args.all else args.limit, unvalidated=_unvalidated(args, target)))
    _say_refused(result)
    return int(result.exit_code)


def _unvalidated(args: argparse.Namespace, target: _Target) -> str:
    """Why `status` did not validate, as it was set: `--no-validate`, or `[run] validate = false` of the config read
    (it said "--no-validate" of a chorus.toml's setting, and where to turn it back on was not said)."""
    from .config_file import config_path

    if getattr(args, "validate", None) is False or target.config.run.validate_site:
        return "validation: not checked (--no-validate)"
    return (f"validation: not checked ([run] validate = false in {config_path(getattr(args, 'config', None))}; "
            "--validate checks it)")


def _say_refused(result) -> None:
    """A dry run a run would refuse (--max-delete): its changes were printed (the files it would remove, to decide
    on), then why, as main says an error (exit code 5)."""
    if result.refused is not None:
        _print_error(result.refused)


@contextlib.contextmanager
def _kept_exit_code(code: int):
    """Printing a command's result: a reader that left (`| head`) ends the output quietly (main), but with the
    command's own exit code, not a success it did not have."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError as exc:
        exc.exit_code = code  # type: ignore[attr-defined]
        raise


def _page_on_stdout(out: str):
    """`report`/`review --out -`: the page (the notebook) is the command's product, not a listing to look at: a
    reader that closed the pipe before it was all written ends the command quietly, as `cat` ends, 141 (128 +
    SIGPIPE). It ended with 0, and `report --out - | ssh host 'cat > r.html'` that lost the connection left a cut
    page that looked written under `set -o pipefail`."""
    return _kept_exit_code(int(ExitCode.READER_LEFT)) if out == "-" else contextlib.nullcontext()


def _early_listing(settings, command: str = "run"):
    """The site's walk (a shard's folders), started now to go on while polars, pyarrow and DuckDB load
    (walk.py); the run's listing takes it. A merge lists nothing. (Started before the settings are validated
    instead, from chorus.toml as written, it gained nothing measurable: on 2 cores the walkers and the imports
    share the CPUs either way; 100k no-change runs, 20 alternations, 2026-12-03.)"""
    from .coverage import parse_shard, shard_from_environment, top_in_shard
    from .processes import ensure_address_space
    from .walk import early_listing

    ensure_address_space(command)  # before the libraries load: under too low a limit they abort, without a word
    coverage = None
    if settings.shard is not None or settings.staging is not None:
        try:
            coverage = parse_shard(settings.shard) if settings.shard else shard_from_environment()
        except ValueError:  # said by scan_shard, with what to do
            return early_listing(None, follow_symlinks=False, workers=1)
    tops = None if coverage is None or coverage.whole else functools.partial(top_in_shard, coverage=coverage)
    return early_listing(None if settings.merge else settings.site, follow_symlinks=settings.follow_symlinks,
                         workers=settings.workers, tops=tops)


def _run_shard(args: argparse.Namespace, settings) -> int:
    from .pipeline import scan_shard
    from .progress import Progress

    shard = scan_shard(settings, progress=Progress(quiet=args.quiet))
    from .shards import merge_command
    from .units import plural

    summary = {"shard": shard.coverage.shard, "shards": shard.coverage.shards, "folder": str(shard.folder),
               "based_on": shard.based_on, "files": shard.n_files, "files_hashed": shard.n_hashed,
               "bytes_hashed": shard.bytes_hashed, "errors": shard.n_errors, "excluded": shard.n_excluded,
               "elapsed_s": round(shard.elapsed_s, 3)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"shard {shard.coverage.shard}/{shard.coverage.shards}: {plural(shard.n_files, 'file')}, {shard.n_hashed} "
              f"hashed ({plural(shard.bytes_hashed, 'byte')}), {plural(shard.n_errors, 'problem')}, "
              f"{shard.n_excluded} excluded, in {shard.elapsed_s:.1f} s; written to "
              f"{shard.folder} (based on version {shard.based_on or '(none)'}); nothing committed: merge with "
              + merge_command(settings.arguments, Path(shard.folder).parent))
    return 0


def cmd_validate(args: argparse.Namespace, argv: list[str]) -> int:
    if args.explain is not None:  # the rules' own text (validate.RULES, which the README's table repeats): no manifest
        return _explain_rules(args)
    from .processes import ensure_address_space

    ensure_address_space("validate")  # before the libraries load: under too low a limit they abort, without a word
    from .pipeline import has_errors
    from .progress import Progress
    from .validate.run import validate_folder, validate_manifest

    from .review import open_manifest

    chosen = _finding_filter(args)  # before anything is read: a misspelt rule is said at once, not after the check
    target = _resolve(args)
    _local_db(target, "validate")
    note = None
    alone = _folder_beside_a_manifest(args, target)
    if alone:
        # `validate --site /data/new_submission` where the site's own ./chorus_manifest.sqlite lies (the folder its
        # cron line cd's into): that manifest's latest version was shown, "0 errors", for a folder it never listed.
        # A folder the manifest does not record is checked on its own, as where there is no manifest.
        print(f"chorus-batch: note: {args.site} is not a site root {target.db} records: checking the folder on its own, in a "
              f"temporary manifest (to check that manifest's latest version reading its files from {args.site}, "
              f"a site that moved, give --db {target.db})", file=sys.stderr)
    if target.site is not None and (alone or not Path(target.db).exists()):
        if args.version_label is not None:  # (it was ignored: the folder's findings shown as the version's)
            raise UsageError(f"--version {shown(args.version_label)}: there is no manifest at {target.db} to hold "
                             "versions; --site alone checks the folder as it is now", where="--version",
                             fix="give the manifest that holds the version (--db), or leave out --version")
        # A folder with no manifest yet: checked in a temporary one, or in a new one at --db.
        settings = _run_settings(args, target)
        if not target.db_given:  # (a temporary manifest, removed: no `versions` to look at after a failed output)
            sys.stdout.manifest_written = False
        _output_checked()
        label, findings, not_taken = validate_folder(settings, keep=target.db_given, argv=argv,
                                                     progress=Progress(quiet=args.quiet))
        where = str(Path(settings.db).resolve()) if target.db_given else f"{settings.site} (checked in a temporary manifest, now removed)"
    elif (stored := _stored_validation(args, target)) is not None:
        label, findings, where, note = stored
        not_taken = None
    else:
        not_taken = None
        overrides = {None: target.site} if target.site else {}
        overrides.update(target.config.site.roots if target.site else {})
        _output_checked()  # (before the check records its findings)
        label, findings = validate_manifest(target.db, argv=argv, overrides=overrides,
                                            workers=args.workers or target.config.run.workers, force=args.force,
                                            cloud=target.config.cloud)
        where = str(Path(target.db).resolve())
    every = findings.height
    failing = _failing(findings, args.fail_on)  # (of every finding: the filters choose what is shown, not this)
    if chosen is not None:
        # --path read as `files --path` reads it (./, the site's absolute path), where the manifest is kept
        kept = target.db_given or not (target.site is not None and (alone or not Path(target.db).exists()))
        folder_of = open_manifest(target.db)._folder if kept else None
        findings = chosen(findings, folder_of)
    # files no rule saw are findings of the check, as a run's scan errors are of the run (exit 1 there too)
    unchecked = not_taken is not None and not_taken.height > 0
    verdict = failing and chosen is not None and (f"--fail-on {args.fail_on}: exit 1, the version has {failing} "
                                                  "(of all its findings, not only those shown)")
    failing = has_errors(findings) if args.fail_on is None else bool(failing)
    code = int(ExitCode.FINDINGS if failing or unchecked else ExitCode.OK)
    with _kept_exit_code(code):  # (known before printing: `validate --json | head -1` ended 0 with errors found)
        _print_validation(args, label, where, findings, not_taken, code, every=every, note=note, verdict=verdict)
    return code


def _folder_beside_a_manifest(args: argparse.Namespace, target: _Target) -> bool:
    """`validate --site DIR` given no manifest (no --db, no [manifest] db) where a ./chorus_manifest.sqlite lies that
    records no root at DIR: the folder is what the user asked about, not that manifest's latest version."""
    if not getattr(args, "site", None) or args.version_label is not None or target.db_given or target.demo \
            or not Path(target.db).is_file():  # (--version: a version the manifest stored, whatever --site says)
        return False
    from .store.manifest import Manifest

    given = args.site.rstrip("/") if "://" in args.site else args.site
    for location in Manifest(target.db).roots()["location"].to_list():
        if "://" in location or "://" in given:
            if location.rstrip("/") == given:
                return False
        elif Path(location).exists() and Path(given).exists() and os.path.samefile(location, given):
            return False
        elif Path(location).resolve() == Path(given).resolve():
            return False
    return True


def _explain_rules(args: argparse.Namespace) -> int:
    """`validate --explain RULE`: each rule the id, family (dicom.) or glob names, with its severity and text, the
    procedure's document and section it enforces, and what to do where its text does not say."""
    import fnmatch
    import textwrap

    from .validate import RULES

    typed = args.explain.strip()
    pattern = typed + "*" if typed.endswith(".") else typed  # dicom. is the family, as --rule reads it
    rules = [rule for rule in RULES if fnmatch.fnmatchcase(rule.id, pattern)]
    if not rules:
        families = sorted({rule.id.split(".")[0] + "." for rule in RULES})
        meant = _close(typed, [rule.id for rule in RULES]) or _close(typed.rstrip(".*") + ".", families)
        raise UsageError(f"no validation rule is {shown(args.explain)!s}"
                         + (f"; did you mean {meant}?" if meant else ""), where="--explain",
                         fix="give a rule id as `chorus-batch validate --help` lists them (wfdb.bad_header), a "
                             "family (dicom.) or a glob (*.missing*)")
    if args.json:
        print(json.dumps([{"rule": r.id, "severity": r.severity, "title": r.title, "checks": r.description,
                           "procedure": [{"document": document or None, "section": section} for document, section
                                         in r.sop], "remedy": r.remedy or None}
                          for r in rules], indent=2, ensure_ascii=not _stdout_utf8()))
        return 0

    def wrapped(text: str, first: str = "  ") -> str:
        return "\n".join(textwrap.wrap(text, 100, initial_indent=first, subsequent_indent="  ", break_on_hyphens=False))

    for n, rule in enumerate(rules):
        print(("\n" if n else "") + f"{rule.id} ({rule.severity}): {rule.title}")
        print(wrapped(rule.description))
        print(wrapped("Procedure: " + rule.procedure() + "."))
        if rule.remedy:
            print(wrapped("What to do: " + rule.remedy))
    return 0


def _failing(findings, fail_on: str | None) -> str:
    """`validate --fail-on`: the findings of that severity or a more serious one, counted ("2 errors, 1 warning"), or
    "" when there are none: said beside a filtered list, whose counts may show none of them."""
    if fail_on in (None, "never"):
        return ""
    import polars as pl

    severities = ["error"] if fail_on == "error" else ["error", "warning"]
    counts = dict(findings.filter(pl.col("severity").is_in(severities))["severity"].value_counts().iter_rows())
    return ", ".join(plural(counts[s], s) for s in severities if counts.get(s))


def _stored_validation(args: argparse.Namespace, target: _Target):
    """`validate --version LABEL` of a version before the latest: (label, its stored findings, where, said to be
    stored); None for the latest, which is checked (or its findings reused) as without --version. A version no
    check stored findings of is said, with what checks it, exit 2: never an empty list taken for a clean version."""
    if args.version_label is None:
        return None
    from .review import open_manifest, other_rules_advice, unvalidated_advice

    reader = open_manifest(target.db)
    label = _version_asked(reader, args.version_label, "--version")
    latest = reader.latest()
    if label == latest:
        return None
    if args.force:
        raise UsageError(f"--force checks the latest version again ({latest}), not version {label}",
                         where="--force with --version",
                         fix=f"leave out --force to see the findings stored for version {label}, or leave out "
                             "--version to check the latest again")
    findings, validated, other = reader.validation(label)
    db = str(reader.path)
    if not validated:
        raise UsageError(unvalidated_advice(label, latest, db).rstrip("."), where=f"--version {label}",
                         fix=f"its files are as version {label} recorded them only while it is the latest: "
                             f"`chorus-batch validate --db {shlex.quote(db)}` checks the latest version ({latest})")
    note = f"the findings stored when version {label} was checked, not checked again (the latest version is {latest})"
    if other:
        note += "; " + other_rules_advice(label, other, latest, db)
    return label, findings, db, note


def _filter_words(args: argparse.Namespace) -> str:
    """The filters given, as typed: said beside the counts, so that a filtered list is never taken for the whole."""
    words = [f"--rule {r}" for r in args.rule or ()]
    words += [f"--severity {args.severity}"] if args.severity else []
    words += [f"--path {args.path}"] if args.path is not None else []
    return " ".join(shown(w) for w in words)


def _finding_filter(args: argparse.Namespace):
    """What `validate --rule/--severity/--path` keep of the findings (None: all), checked before the check runs: a
    rule id no rule has is refused (exit 2) with the ids it may mean, as an option misspelt is. The review API's
    `findings(rule=, severity=, path=)` keeps the same (one filter: validate.select)."""
    from .validate.select import finding_filter

    return finding_filter(args.rule, args.severity, args.path, cli=True)


def _print_validation(args, label, where, findings, not_taken, code: int, *, every: int | None = None,
                      note: str | None = None, verdict: str | None = None) -> None:
    from .report import findings_dict, findings_text

    words = _filter_words(args)
    if args.json:
        filtered = {"filter": words, "all_findings": every} if words else {}
        stored = {"stored": note} if note else {}
        _write_json({"version": label, "manifest": where if label else None, **stored, **filtered,
                     **(findings_dict(findings) or {}), "findings": findings,
                     **({"not_checked": not_taken} if not_taken is not None else {}),
                     **({"fail_on": args.fail_on} if args.fail_on else {}),
                     "exit_code": code})  # (as `run --json` has it: a script reads one object)
    else:
        print(f"version {label} of {where}:" if label else f"{where}:")
        if note:
            print(note)
        if words:  # a filtered list is never taken for the whole
            print(f"{words}: {findings.height} of {plural(every or 0, 'finding')} shown")
        print("\n".join(findings_text(findings, examples=50, more="--json lists them all")))
        if verdict:  # (the list shown may hold none of what makes the exit code 1)
            print(verdict)
        if not_taken is not None and not_taken.height:  # no rule saw these files: say so, not only that all is well
            print(f"not checked: {plural(not_taken.height, 'file')} the scan could not take")
            print("\n".join(f"    {shown_name(path)}: {shown_text(message)}" for path, message in
                            not_taken.head(20).select("srcfile", "message").iter_rows()))
            if not_taken.height > 20:
                print(f"    ... and {not_taken.height - 20} more (--json lists them all)")


def cmd_registry(args: argparse.Namespace, argv: list[str]) -> int:
    from .progress import Progress
    from .registries import make_registries

    target = _resolve(args)
    _local_db(target, "registry")
    registry = target.config.registry
    overrides = {None: target.site, **target.config.site.roots} if target.site else {}
    try:
        registries, paths = make_registries(  # (--out "~/release" quoted: the home folder, as _resolve reads it)
            target.db, args.out, argv=argv, version=args.version_label, overrides=overrides,
            ranges={"Images": registry.image_proc_ids, "Waveforms": registry.waveform_proc_ids},
            workers=args.workers or target.config.run.workers, omop=args.omop, cloud=target.config.cloud,
            progress=Progress(quiet=args.quiet))
    except (KeyboardInterrupt, Stopped) as exc:
        if getattr(exc, "written", None):  # the signal was held while they were put in place: all of them are
            exc.outcome = ("the proc_ids given stay recorded in the manifest; every registry file had been written "  # type: ignore[union-attr]
                           f"to --out before the signal came: {', '.join(str(p.resolve()) for p in exc.written)}")  # type: ignore[union-attr]
        raise
    with _kept_exit_code(int(ExitCode.FINDINGS) if registries.warnings else int(ExitCode.OK)):
        print(f"version {registries.version}: {registries.waveforms.height} waveform and {registries.images.height} image "
              f"rows, {plural(registries.procedures.height, 'procedure')} ({registries.new_proc_ids} new proc_ids)")
        for path in paths:
            print(f"wrote {shown_name(str(path.resolve()))}")
    for warning in registries.warnings:  # (they name the site's files: a control character in one is shown escaped)
        print(f"chorus-batch: warning: {shown_text(warning)}", file=sys.stderr)
    return int(ExitCode.FINDINGS) if registries.warnings else int(ExitCode.OK)


def cmd_upgrade(args: argparse.Namespace, argv: list[str]) -> int:
    from .store import Manifest

    target = _resolve(args)
    manifest = Manifest(_local_db(target, "upgrade"))
    if not manifest.path.exists():
        raise UsageError(f"no manifest at {manifest.path}", where=str(manifest.path), fix="pass --db with the manifest's path")
    if manifest.is_empty_file():  # (said before the lock: "nothing was changed" left a new <db>.lock beside it)
        manifest.ensure_schema(create=False)
    from .store.schema import SCHEMA_VERSION

    restored: list[str] = []
    if manifest.up_to_date():  # nothing to upgrade: no lock wanted (a reviewer's read-only copy was told "cannot
        before = after = SCHEMA_VERSION  # create the lock file ... not upgraded")
    else:
        with manifest.lock(argv):
            lacking = manifest.missing_indexes() if manifest.schema_on_disk() == SCHEMA_VERSION else []
            before, after = manifest.ensure_schema(create=False)
            restored = [name for name in lacking if name not in manifest.missing_indexes()]
    try:
        pending = _after_upgrade(manifest, target.config.patterns)
    except BaseException as exc:  # (reading what is left to do) the upgrade is committed: not "not upgraded"
        if before != after:
            with contextlib.suppress(AttributeError, TypeError):
                exc.upgraded = (before, after)  # type: ignore[union-attr]  (a signal: said by main)
                exc.outcome = (f"the upgrade of the manifest from schema {before} to {after} had been committed and "  # type: ignore[union-attr]
                               "stays; only what the next run does beyond it could not be told")
        raise
    if restored:
        pending = f"; created again its {'index' if len(restored) == 1 else 'indexes'} {', '.join(restored)}" + pending
    print(f"{manifest.path.resolve()}: schema {before} -> {after}{pending}" if before != after
          else f"{manifest.path.resolve()}: already at schema {after}; " + (pending.lstrip("; ") or "nothing to do"))
    return 0


def _after_upgrade(manifest, patterns: dict[str, list[str]]) -> str:
    """What the next run does that the schema upgrade did not (a release of the same schema classifies or checks
    otherwise): '' when nothing, else '; the next run ...'."""
    from .classify import build_patterns, fingerprint
    from .validate.run import FROM_CACHED_FACTS

    latest = manifest.latest_version()
    if latest is None:
        return ""
    todo = []
    if manifest.classification() != fingerprint(build_patterns(patterns)):
        todo.append("classifies the current rows again, in place (another release, or other [patterns], "
                    "classified them; no version is made of it)")
    if manifest.validation.checked_by_other_rules(latest["label"]):
        todo.append(f"checks version {latest['label']} again by this release's rules, {FROM_CACHED_FACTS}")
    return "; the next run " + " and ".join(todo) if todo else ""


def cmd_testdata(args: argparse.Namespace, argv: list[str]) -> int:
    from .processes import default_workers
    from .testdata import Spec, make_testdata

    # Spec checks the sizes
    spec = Spec(args.persons, args.files_per_person, args.size, args.seed, args.change_fraction, args.layout)
    first, second = make_testdata(args.out, spec, workers=args.workers or default_workers())
    try:
        print(f"wrote {plural(first, 'file')} to {Path(args.out) / 'first'} and {plural(second, 'file')} to {Path(args.out) / 'second'}")
        sys.stdout.flush()
    except OutputError as exc:
        exc.outcome = (f"the test data was written ({plural(first, 'file')} in {Path(args.out) / 'first'}, "
                       f"{plural(second, 'file')} in {Path(args.out) / 'second'}) and stands; only this line saying "
                       "so was not written")
        raise
    return 0


def _version_asked(reader, value, option: str) -> str:
    """The label `value` (a label, an ISO time, None: the latest) selects, as every reading command resolves its
    --version / --as-of / --from / --to: a time is said on stderr with the version it selected, as `report` and
    `review` say it (`files --as-of 2099-01-01 --json` listed the latest version's files without a word, and
    --json and --csv name no version at all); an unknown one is refused naming the option."""
    label = reader.resolve(value, asked=option)
    note = reader.as_of_note(value, label)
    if note:
        print(f"chorus-batch: {note}", file=sys.stderr)
    return label


def _db(args: argparse.Namespace, target: _Target | None = None) -> str:
    """The manifest file a read-only command reads: --db, or a fresh local copy of a manifest in Azure."""
    target = target or _resolve(args)
    from .urls import is_remote

    if not is_remote(target.db):  # the Azure client (store.remote: asyncio, ssl) loads for a manifest in Azure only
        return target.db
    from .store.remote import read_copy

    return str(read_copy(target.db, target.config.cloud))


def _local_db(target: _Target, command: str) -> str:
    """Commands that write into the manifest besides `run` work on a local file only (for now)."""
    from .urls import is_remote, mask_url  # (not store.remote: no Azure client to refuse a URL)

    if is_remote(target.db):
        raise UsageError(f"`{command}` works on a local manifest only, not on {mask_url(target.db)}",
                         where="--db / [manifest] db",
                         fix="`chorus-batch run --db az://...` validates each version it commits; or pass --db "
                             "with a local copy of the manifest")
    return target.db


def cmd_unlock(args: argparse.Namespace, argv: list[str]) -> int:
    from .sources import mask_url
    from .store.remote import RemoteManifest, is_remote

    target = _resolve(args)
    if not is_remote(target.db):
        from .store import Manifest

        # A path naming no manifest is no "local manifest": most often an az:// URL mistyped (`az:/c/m.sqlite`),
        # whose lease would stay while this said there was nothing to unlock.
        try:
            Manifest(target.db).require_file()
        except UsageError as exc:
            raise UsageError(exc.what, where=exc.where,
                             fix="unlock breaks the lease of a manifest in Azure: pass --db az://CONTAINER/path/"
                                 "manifest.sqlite (a local manifest's lock needs no unlock)") from None
        from .store.lock import live_holder

        db = Path(target.db).resolve()
        # (a run holding it now: "nothing to unlock" alone sent the user looking for no holder, or to remove the file)
        held = [f"{what} by {holder}" for what, suffix in (("runs and upgrades", ".lock.json"),
                                                            ("uploads", ".upload.lock.json"))
                if (holder := live_holder(Path(f"{db}{suffix}"))) is not None]
        print(f"{db} is a local manifest: its lock is an OS file lock, released by the OS as soon as the run holding "
              "it exits or is killed. Nothing to unlock." + (
                  f" It is held now for {'; for '.join(held)}: to end it, stop that process (Ctrl-C or `kill PID`: it "
                  "records its end and lets go of the lock; removing the lock file does not end it)" if held else ""))
        return 0
    remote = RemoteManifest(target.db, target.config.cloud)
    where = mask_url(target.db)
    holder = remote.lock_holder()
    if holder is None and remote.properties() is None and remote.properties(remote.lock_blob()) is None:
        # nothing there at all: a mistyped URL, not "not locked" while the manifest meant stays locked
        raise UsageError(f"no manifest at {where}, and no lock: nothing there to unlock", where=where,
                         fix="give the --db the refused run was given (its message names the URL to unlock); "
                             "`chorus-batch versions --db az://...` shows whether a URL holds a manifest")
    if holder is None:
        print(f"{where} is not locked (no run holds its lease); nothing to do")
        return 0
    print(f"{where} is locked by {holder}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("unlock asks before breaking a lock, and this is not a terminal", where="unlock",
                             fix=f"check that the run named above is gone, then run `chorus-batch unlock --db {where} --yes`")
        answer = input("Break this lock? The run holding it can then no longer upload its result. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("left locked")
            return 0
    remote.break_lock()
    print(f"broke the lock of {holder}; the next run can take it")
    return 0


def cmd_versions(args: argparse.Namespace, argv: list[str]) -> int:
    from .report import frame_text
    from .store import Manifest
    from .store.uploads import versions_with_upload_state

    db = _db(args)
    if Path(db).is_dir():  # a --parquet snapshot folder, as files, diff, history and report read it
        from .review import open_manifest

        frame = open_manifest(db).versions()
    else:
        manifest = Manifest(db)
        frame = versions_with_upload_state(manifest)
        edited = manifest.edited_version_times()
        if edited:  # listed as recorded, but not taken for the commit times
            from .progress import log

            log.warning(f"the commit times (finished_at) of these versions were edited: {'; '.join(edited)}; they are "
                        "listed as recorded, and a version asked by a time (--as-of TIME) is refused until they are "
                        "set back within their runs' times (give a label meanwhile)")
    if args.json:
        print(json.dumps(frame.to_dicts(), indent=2))
    else:
        print(frame_text(frame.select(c for c in ("label", "finished_at", "mode", "n_added", "n_removed", "n_replaced",
                                                  "n_renamed", "n_unchanged", "n_errors", "n_files", "upload")
                                      if c in frame.columns)))
    return 0


def cmd_changes(args: argparse.Namespace, argv: list[str]) -> int:
    from .store import Manifest

    from .review import open_manifest

    db = _db(args)
    reader = open_manifest(db) if Path(db).is_dir() or args.version_label is not None else None  # one, if any
    if reader is not None and Path(db).is_dir():  # a --parquet snapshot folder, as files, diff, history and report read it
        label = _version_asked(reader, args.version_label, "--version")
        frame = reader.changes(label)
    else:  # a label or an ISO time, as files, diff and report take it
        version = args.version_label if reader is None else _version_asked(reader, args.version_label, "--version")
        label, frame = Manifest(db).changes(version)
    if args.path is not None:
        reader = reader or open_manifest(db)
        frame = reader.rows_under(frame, args.path, ("srcfile", "old_srcfile"))
        if frame.height == 0 and reader.rows_under(reader.files(label), args.path).height == 0:
            # (nothing under it changed, and nothing lies there either: a mistyped path or a pattern said "0 changes")
            _say_nothing_under(reader, args.path, f"no changes and no files in version {label}", label, db=args.db)
    if args.md5sum:
        return _print_md5sum(frame)
    if args.json:
        _write_json(frame)
        return 0
    if not args.csv:
        from .units import plural

        print(f"version {label}: {plural(frame.height, 'change')}")
    _print_frame(args, frame, ["change", "srcfile", "old_srcfile", "modality", "size", "md5"])
    return 0


JSON_SLICE_ROWS = 10_000


def _write_sliced(write, frame, render, *, before: str, between: str, after: str, empty: str | None = None) -> None:
    """`before + render(a slice) + between + render(the next slice) ... + after` (`empty`: for a frame of no rows),
    JSON_SLICE_ROWS rows at a time, where `render(slice)` is the slice's part of the whole text. The one way the
    commands write a version's rows: the whole text of 1M rows and what it was made of (a dict per row, polars'
    whole JSON or CSV, then a copy) took 1-3 GiB at once, a slice's takes a few MiB; the text is the same.
    `frame` may be slices of one (an iterable of frames, as `ManifestReader.files_sliced` reads them)."""
    written = False
    for part in _slices(frame):
        if part.height:
            write((between if written else before) + render(part))
            written = True
    write(after if written else before + after if empty is None else empty)


def _slices(frame):
    """A frame in slices of JSON_SLICE_ROWS rows; slices (an iterable of frames) as they are."""
    if not _is_frame(frame):
        return frame
    return (frame.slice(start, JSON_SLICE_ROWS) for start in range(0, frame.height, JSON_SLICE_ROWS))


_FRAME_MARK = "\0frame %d\0"  # where a frame goes in a JSON text (json.dumps writes a NUL as \u0000)


def _write_json(value, write=None) -> None:
    """`print(json.dumps(value, indent=2))`, the same text, where `value` is a frame (as its `to_dicts()`) or a dict
    whose values may be frames: their rows are written a slice at a time (_write_sliced), not as a dict per row of
    the whole version in one text (`changes --json` of 1M changes: 3.1 GiB; `validate --json` of 990k: 2.1 GiB)."""
    write = write or sys.stdout.write
    frames: list = []

    def marked(item):
        if not _is_frame(item):
            return item
        frames.append(item)
        return _FRAME_MARK % (len(frames) - 1)

    nested = isinstance(value, dict)
    text = json.dumps({key: marked(item) for key, item in value.items()} if nested else marked(value), indent=2)
    marks = [json.dumps(_FRAME_MARK % n) for n in range(len(frames))]
    if any(text.count(mark) != 1 for mark in marks):  # (a text of the dict's own that is a mark: written whole)
        write(json.dumps({k: v.to_dicts() if _is_frame(v) else v for k, v in value.items()} if nested
                         else value.to_dicts(), indent=2) + "\n")
        return
    inner, outer = ("    ", "  ") if nested else ("  ", "")
    for frame, mark in zip(frames, marks):
        head, text = text.split(mark, 1)
        write(head)
        _write_sliced(write, frame,  # each row as json.dumps(a list, indent=2) writes it (a JSON string holds no line end)
                      lambda rows: ",\n".join(inner + json.dumps(row, indent=2).replace("\n", "\n" + inner)
                                              for row in rows.to_dicts()),
                      before="[\n", between=",\n", after="\n" + outer + "]", empty="[]")
    write(text + "\n")


def _is_frame(value) -> bool:
    """A polars frame (checked without importing polars: most outputs hold none)."""
    return type(value).__name__ == "DataFrame" and type(value).__module__.startswith("polars")


def _print_md5sum(frame) -> int:
    """The `md5sum -c` lines of a files, changes or diff frame; files without an MD5 are named on stderr (exit 1)."""
    from .review import md5sum_lines, without_md5
    from .units import plural

    missing = without_md5(frame)  # (first: a reader that leaves mid-list ends it with exit 1 all the same)
    with _kept_exit_code(int(ExitCode.FINDINGS if missing.height else ExitCode.OK)):
        sys.stdout.flush()
        out = sys.stdout.buffer  # bytes, "\n" endings on every platform: what md5sum reads
        for line in md5sum_lines(frame):
            out.write(line.encode("utf-8", "surrogateescape") + b"\n")
        out.flush()
    if missing.height == 0:
        return int(ExitCode.OK)
    has, is_ = ("has", "is") if missing.height == 1 else ("have", "are")
    print(f"chorus-batch: {plural(missing.height, 'file')} {has} no MD5 (unverifiable) and {is_} not in the list",
          file=sys.stderr)
    for path in missing["srcfile"].head(10).to_list():
        print(f"  {shown_name(path)}", file=sys.stderr)
    if missing.height > 10:
        print(f"  ... {missing.height - 10} more", file=sys.stderr)
    return int(ExitCode.FINDINGS)


def _print_frame_json(frame) -> None:
    """polars' JSON of the frame (`write_json`), a slice at a time (_write_sliced), as standard output can hold it:
    where its encoding cannot (PYTHONIOENCODING=ascii), the stream's backslash escapes (`\\xe9`) made it invalid
    JSON; JSON's own escapes (`\\u00e9`) keep it valid. `files --json` of 1M files made the whole text, then a copy
    (2.2 GiB). `frame` may be a function giving its slices (read again where the stream is not UTF-8: once to
    find out whether it is ASCII)."""
    def again():
        return _slices(frame() if callable(frame) else frame)

    if _stdout_holds(again):
        render, between = (lambda rows: _json_safe(rows).write_json()[1:-1]), ","
    else:  # json.dumps of a list: its items joined by ", "
        render, between = (lambda rows: json.dumps(json.loads(_json_safe(rows).write_json()), ensure_ascii=True)[1:-1]), ", "
    _write_sliced(sys.stdout.write, again(), render, before="[", between=between, after="]\n")


def _stdout_utf8() -> bool:
    """Whether standard output writes UTF-8. Where it does not, JSON takes its own escapes (`\u00e9`) for every
    letter outside ASCII: a Windows redirect writes the ANSI code page (cp1252), which holds é, and
    `files --json > files.json` wrote it as the byte 0xE9, which a JSON reader (UTF-8, RFC 8259) refuses."""
    import codecs

    try:
        return codecs.lookup(getattr(sys.stdout, "encoding", None) or "utf-8").name == "utf-8"
    except LookupError:
        return False


def _stdout_holds(slices) -> bool:
    """Whether polars' JSON of the frame (raw UTF-8) can go to standard output as it is: UTF-8 there, or ASCII
    (a slice at a time, `slices()` giving them: no copy of a 1M-row output to find out; only where the stream is
    not UTF-8)."""
    return _stdout_utf8() or all(_json_safe(part).write_json().isascii() for part in slices())


def _json_safe(frame):
    """The frame with its nanosecond times (mtime_ns, verified_ns: about 1.8e18, past 2**53) as decimal strings, as
    the protobuf JSON mapping writes 64-bit integers: a JavaScript or jq reader turned 1796475490969854383 into
    1796475490969854500, silently. By name, not by value, so a column's JSON type never depends on the data."""
    import polars as pl

    wide = [name for name, dtype in frame.schema.items() if name.endswith("_ns") and dtype.is_integer()]
    return frame.with_columns(pl.col(wide).cast(pl.String)) if wide else frame


def _print_frame(args: argparse.Namespace, frame, table_columns: list[str], *, limit: int = 200,
                 total: int | None = None) -> None:
    """JSON array, CSV, or (for a person) the first rows as a table; `total`: the rows there are, where `frame` holds
    only the first (the table's)."""
    from .report import head_text

    if args.json:
        _print_frame_json(frame)
    elif args.csv:
        _print_csv(frame() if callable(frame) else frame)
    else:
        print("\n".join(head_text(frame.select(table_columns), limit, "--csv or --json lists them all", total=total)))


def _print_csv(frame) -> None:
    """CSV a spreadsheet opens without running a name as a formula (report.spreadsheet), a slice at a time
    (_write_sliced: `files --csv` of 1M files made the whole text at once); stderr says what was quoted."""
    from .fsutil import write_stdout
    from .report.spreadsheet import protect, protected_note

    quoted = 0

    def render(rows) -> str:  # (report.spreadsheet.csv_text of the slice, without its header)
        nonlocal quoted
        safe, count = protect(rows)
        quoted += count
        return safe.write_csv(include_header=False)

    # A data file, in UTF-8 as `registry --out` writes one, whatever the stream's encoding (write_stdout)
    slices = iter(_slices(frame))  # (slices, as files_sliced gives them: the first gives the header, empty or not)
    first = frame.head(0) if _is_frame(frame) else next(slices)
    _write_sliced(write_stdout, itertools.chain([first], slices), render, before=first.head(0).write_csv(),
                  between="", after="")
    if quoted:
        print(f"chorus-batch: {protected_note(quoted)}", file=sys.stderr)


def cmd_files(args: argparse.Namespace, argv: list[str]) -> int:
    import warnings

    from .review import NoSuchPerson, open_manifest

    reader = open_manifest(_db(args))
    args.as_of = _version_asked(reader, args.as_of, "--as-of")  # (then a label: the reads below say nothing more)
    table = not (args.md5sum or args.json or args.csv)
    # Of the version's rows, the table reads its first 200 (and counts the rest), --md5sum two columns: read whole,
    # `files` of 1M files peaked at ~890 MiB whatever it printed; --json and --csv read it a slice at a time. --path:
    # only the rows under the path (the query's: each slice of the whole version was filtered here, and the rows
    # under the path held whole, all 16 columns, before the table showed 200 of them or --md5sum wrote two).
    narrow = table or args.md5sum
    empty = None  # (--path: whether no row is under it)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", NoSuchPerson)
        if not narrow:  # --json, --csv, --path: the version a slice at a time, as they write it or filter it
            read = reader.files_sliced(args.as_of, modality=args.modality, person=args.person, path=args.path,
                                       rows=JSON_SLICE_ROWS)
            head = next(read)
            empty = head.height == 0
            first = itertools.chain([head], read)

            def frame():  # (the slices read, then read again: --json to a stream not UTF-8 reads them twice)
                nonlocal first
                if first is not None:
                    given, first = first, None
                    return given
                with warnings.catch_warnings():  # (said once, above)
                    warnings.simplefilter("ignore", NoSuchPerson)
                    return reader.files_sliced(args.as_of, modality=args.modality, person=args.person,
                                               path=args.path, rows=JSON_SLICE_ROWS)
            count = None
        else:
            count, frame = reader.files_part(args.as_of, modality=args.modality, person=args.person,
                                             columns=FILE_TABLE_COLUMNS if table else ("srcfile", "md5"),
                                             limit=FILE_TABLE_ROWS if table else None, path=args.path)
            empty = count == 0
    for warning in said:  # the library's own words for a person the version does not have (what a notebook shows)
        if issubclass(warning.category, NoSuchPerson):  # (scrubbed: it quotes the --person given, a SAS pasted too)
            from .urls import scrub

            print(scrub(f"chorus-batch: {warning.message}"), file=sys.stderr)
    if args.path is not None:
        if empty and args.person is None and args.modality is None:
            # (a mistyped folder said "0 files" and nothing else; `history` suggests what a path may mean)
            _say_nothing_under(reader, args.path, "no files", reader.resolve(args.as_of), db=args.db)
    if args.md5sum:
        return _print_md5sum(frame)
    if not (args.json or args.csv):
        from .units import plural

        print(f"version {reader.resolve(args.as_of)}: {plural(count, 'file')}")
    _print_frame(args, frame, list(FILE_TABLE_COLUMNS), limit=FILE_TABLE_ROWS, total=count)
    return 0


FILE_TABLE_COLUMNS = ("srcfile", "modality", "person_id", "size", "md5", "version_valid")  # `files`' table
FILE_TABLE_ROWS = 200  # the rows it shows


def _scan_error_of(reader, path: str, label: str | None) -> str:
    """What to add to "no file PATH" where PATH is a scan error of version `label` (a non-UTF-8 name as status, the
    run and the report show it, `OMOP/bad\\xffname.csv`; an unreadable file): why no file is there. Copied from those
    outputs into `history` or `--path`, it was said to be no file at all, as if mistyped."""
    if label is None:
        return ""
    import polars as pl

    errors = reader.scan_errors(label)
    found = errors.filter(pl.col("srcfile").is_in(reader.spellings(path)))
    if found.height == 0:
        return ""
    kind, message = found.select("kind", "message").row(0)
    return f"; it is a scan error of version {label}, not a tracked file ({kind}: {shown_text(message)})"


def _held_in_other_versions(reader, path: str, db: str | None = None) -> str:
    """What to add to "no files under PATH" where PATH is a file of other versions than the one asked (`files --as-of V
    --path` of a file V had removed, and a later version added again): the versions that hold it. It was answered
    "(paths are site-relative, as `chorus-batch files` prints them)", as if the path were mistyped."""
    rows = reader.history_of(path, quiet=True)
    rows = rows.filter(rows["srcfile"].is_in(reader.spellings(path)))  # its own rows, not those of a file renamed into it
    if rows.height == 0:
        return ""
    spans: list[list] = []
    for valid, invalid in rows.select("version_valid", "version_invalid").rows():
        if spans and spans[-1][1] == valid:  # replaced in place: one span
            spans[-1][1] = invalid
        else:
            spans.append([valid, invalid])
    said = ", ".join(f"from {valid} on" if invalid is None else f"from {valid} until {invalid}" for valid, invalid in spans)
    named = rows["srcfile"][0]
    command = shlex.join(["chorus-batch", "history", *(["--db", db] if db else []), named])  # the manifest asked
    return f"; {named!r} is a file of other versions ({said}): `{command}` lists them"


def _absolute_elsewhere(reader, path: str, paths: Any) -> str:
    """What to add where a path typed absolute named nothing because it lies under no root the manifest records (a
    manifest or a snapshot folder copied to another machine or folder, read beside a copy of the site): the roots it
    records, and the site-relative path the typed one ends in that `paths()` (the paths asked of) hold. It was said
    only as `no file '/copy/site/OMOP/a.csv' in the manifest`, as if the file were not tracked. `paths` is called
    only for an absolute path: `files --path` of a relative one that named nothing read the whole version here."""
    relative = reader.site_relative(path)
    if not (relative.startswith("/") or re.match(r"^[A-Za-z]:/", relative)):
        return ""
    paths = paths()
    roots = reader.root_locations()
    said = (f"; it is an absolute path under none of the folders the manifest records its site in "
            f"({', '.join(repr(root) for root in roots[:3])}{' and more' if len(roots) > 3 else ''})" if roots
            else "; it is an absolute path, and the manifest records no folder of its site")
    parts = [part for part in relative.split("/") if part]
    for start in range(1, len(parts)):
        tail = "/".join(parts[start:])
        if paths.filter((paths == tail) | paths.str.starts_with(tail + "/")).len():
            return said + f": paths are site-relative; did you mean {tail!r}?"
    return said + ": paths are site-relative"


def _say_nothing_under(reader, path: str, what: str, label: str | None = None, *, db: str | None = None) -> None:
    """`files --path`/`changes --path` of a path that names nothing: said on stderr with the paths it may mean, or why
    a pattern matched nothing (a path is taken as a name, '*' and all: `--path 'OMOP/*.csv'` listed nothing, exit 0).
    The path is quoted as typed, as `history` quotes it (repr doubled a backslash: `'OMOP/bad\\\\xffname.csv'`)."""
    from .urls import scrub

    scan_error = _scan_error_of(reader, path, label or reader.latest())
    if scan_error:  # (scrubbed as an error is: it quotes what was given, a SAS URL pasted as --path among them)
        print(scrub(f"chorus-batch: {what} under {quoted(path)}{scan_error}"), file=sys.stderr)
        return
    held = _held_in_other_versions(reader, path, db) if reader.latest() else ""
    if held:
        print(f"chorus-batch: {what} under {quoted(path)}{held}", file=sys.stderr)
        return
    elsewhere = _absolute_elsewhere(reader, path, lambda: reader._paths_at(label)["srcfile"]) if reader.latest() else ""
    if elsewhere:
        print(scrub(f"chorus-batch: {what} under {quoted(path)}{elsewhere}"), file=sys.stderr)
        return
    similar = reader.similar_paths(path, folders=True, as_of=label) if reader.latest() else []  # the version asked of
    pattern = re.search(r"[*?\[]", path) is not None
    print(scrub(f"chorus-batch: {what} under {quoted(path)}"
                + (f"; did you mean {', '.join(repr(p) for p in similar)}?" if similar else
                   "; --path takes a file or a folder as `chorus-batch files` prints it, not a pattern: * ? [ are read "
                   "as part of a name (give the folder, or filter the --csv output)" if pattern else
                   " (paths are site-relative, as `chorus-batch files` prints them)")), file=sys.stderr)


def cmd_diff(args: argparse.Namespace, argv: list[str]) -> int:
    from .review import open_manifest

    reader = open_manifest(_db(args))
    args.from_version = _version_asked(reader, args.from_version, "--from")
    args.to_version = _version_asked(reader, args.to_version, "--to")
    frame = reader.diff(args.from_version, args.to_version)
    if args.md5sum:
        return _print_md5sum(frame)
    if not (args.json or args.csv):
        counts = dict(frame.group_by("change").len().iter_rows())
        print(f"{reader.resolve(args.from_version)} -> {reader.resolve(args.to_version)}: "
              + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("added", "removed", "replaced", "renamed")))
    _print_frame(args, frame, ["change", "srcfile", "old_srcfile", "modality", "size", "md5"])
    return 0


def cmd_history(args: argparse.Namespace, argv: list[str]) -> int:
    from .review import open_manifest
    from .urls import mask_url

    if not args.path.strip():
        raise UsageError("history needs the path of a file; it was given an empty one", where="history PATH",
                         fix="give the site-relative path as `chorus-batch files` prints it")
    target = _resolve(args)
    # (messages name the manifest as given, a URL masked: not its private read copy, downloaded again for each message;
    # a local one absolute, as every other command says it: a cron job's current folder is not the shell's)
    where = mask_url(target.db) if "://" in target.db else str(Path(target.db).absolute())
    reader = open_manifest(_db(args, target))
    reader.resolve(None)  # no version yet: exit 2 saying so (as files, changes, diff), not "no file PATH"
    frame = reader.history_of(args.path, quiet=True)  # an unknown path: said below, as an error
    if frame.height == 0 and not (args.json or args.csv):
        shown = quoted(args.path)  # a backslash as typed, not doubled
        # The commands suggested read the manifest asked (a local one): pasted without --db, they read the default
        # manifest of the shell's folder, or none
        db = [] if args.db is None or "://" in target.db else ["--db", where]
        # A file's path with a separator after it: rows_under counts the file itself as "in" it, and it was
        # called a folder of one file.
        bare = args.path.rstrip("/\\")
        of_bare = reader.history_of(bare, quiet=True) if bare and bare != args.path else None
        inside = reader.rows_under(reader.files(), args.path).height if reader.latest() else 0
        # A path that was a file and is a folder now (a file replaced by a folder of its name) is a folder today:
        # "'x' is a file, not a folder" was untrue of it. Said as a folder, with the file it was.
        was_file = ""
        if of_bare is not None and of_bare.height:
            named, ended = of_bare["srcfile"][-1], of_bare["version_invalid"][-1]
            if ended is None or not inside:
                tense = "is a file" if ended is None else f"was a file (until version {ended})"
                raise UsageError(f"{shown} ends with a separator, but {named!r} {tense}, not a folder",
                                 where=where, fix=f"ask `{shlex.join(['chorus-batch', 'history', *db, named])}`")
            was_file = (f"; {named!r} was a file until version {ended}: `{shlex.join(['chorus-batch', 'history', *db, named])}` "
                        "tells its story")
        if inside:  # a folder: history follows one file
            raise UsageError(f"{shown} is a folder of {inside} current {'file' if inside == 1 else 'files'}, not a file"
                             + was_file, where=where,
                             fix=f"list them with `{shlex.join(['chorus-batch', 'files', *db, '--path', args.path])}`, then ask the "
                                 "history of one")
        # A name that differs in case, Unicode form or a space at an end looks the same: quoted as Python
        # does, so the difference shows (ascii(): é as one character, \xe9, or as e + accent, e\u0301).
        similar = reader.similar_paths(args.path, ever=True)  # a file removed since has a history too
        scan_error = _scan_error_of(reader, args.path, reader.latest())
        if scan_error:
            raise UsageError(f"no file {shown} in the manifest{scan_error}", where=where,
                             fix="do what the scan error says, then run again to track the file")
        elsewhere = _absolute_elsewhere(reader, args.path, lambda: reader._paths_ever()["srcfile"])
        if elsewhere:
            raise UsageError(f"no file {shown} in the manifest{elsewhere}", where=where,
                             fix="give the path relative to the site's folder, as `chorus-batch files` prints it")
        raise UsageError(f"no file {shown} in the manifest" + (
            f"; did you mean {', '.join(ascii(p) if not p.isascii() else repr(p) for p in similar)}"
            + (f" (typed: {ascii(args.path)})" if not args.path.isascii() else "") + "?" if similar else ""),
            where=where, fix="give the site-relative path as `chorus-batch files` prints it")
    # (where a rename took it: "ended_by renamed" alone left the table's reader without the path it went on under)
    _print_frame(args, frame, ["version_valid", "version_invalid", "change", "ended_by", "renamed_to", "srcfile", "size",
                               "md5"])
    return 0


def cmd_report(args: argparse.Namespace, argv: list[str]) -> int:
    from .report.html import write_report
    from .urls import is_remote, mask_url

    target = _resolve(args)
    # A manifest in Azure is read from a local copy in the cache; the page names it, and the commands it suggests
    # take it, by its URL: the copy's path sent `chorus-batch validate` to record findings in that throwaway copy.
    with _page_on_stdout(args.out):
        info = write_report(_db(args, target), args.out, version=args.version_label,
                            named=mask_url(target.db) if is_remote(target.db) else None)
    said = sys.stderr if args.out == "-" else sys.stdout  # (standard output holds the page)
    # quoted with escapes as other messages show names: a line break in --out split this line in two
    where = "the report to standard output" if args.out == "-" else shown_name(str(Path(info.path).resolve()))
    print(f"wrote {where} (version {info.version}, {plural(info.images, 'plot')}, {info.elapsed_s:.1f} s)", file=said)
    if info.as_of:  # (a date in the future reported the latest version without a word)
        print(f"  {info.as_of}", file=said)
    for flag in info.flags:
        print(f"  needs a look: {flag}", file=said)
    return 0


def cmd_review(args: argparse.Namespace, argv: list[str]) -> int:
    from .report.notebook import run_review
    from .urls import is_remote, mask_url

    target = _resolve(args)  # a manifest in Azure: the notebook reads a local copy, and names it by its URL
    with _page_on_stdout(args.out):
        seconds = run_review(_db(args, target), args.out, version=args.version_label, compare_to=args.compare_to,
                             named=mask_url(target.db) if is_remote(target.db) else None)
    to_stdout = args.out == "-"  # (standard output holds the notebook)
    print(f"wrote {'the executed notebook to standard output' if to_stdout else shown_name(str(Path(args.out).resolve()))} "
          f"({seconds:.1f} s)", file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _central(args: argparse.Namespace) -> tuple[_Target, str]:
    """The manifest and the central container of upload, verify and mark-uploaded."""
    from .urls import is_remote

    target = _resolve(args)
    if not is_remote(target.db):  # a mistyped --db is said first: it is the one every later message is about
        from .store import Manifest

        Manifest(target.db).require_file()
    to = args.to or target.config.central.to
    if not to:
        raise UsageError(f"`{args.command}` needs the central container", where="--to / [central] to of chorus.toml",
                         fix="pass --to az://<container>/ (the site's container in the CHoRUS storage account), or set "
                             "[central] to = \"az://<container>/\" in chorus.toml")
    return target, to


def cmd_upload(args: argparse.Namespace, argv: list[str]) -> int:
    from .progress import Progress
    from .report import upload_dict, upload_text

    if args.script and (args.json or args.dry_run):
        # (both were ignored: --json printed a bash script where a caller parsed JSON, --dry-run wrote the script)
        flags = " and ".join(flag for flag, given in (("--json", args.json), ("--dry-run", args.dry_run)) if given)
        raise UsageError(f"upload --script prints a bash script and sends nothing itself; it does not go with {flags}",
                         where="upload --script", fix=f"leave out {flags}: the script lists what it would send; "
                                                     "`chorus-batch upload --dry-run [--json]` says it without a script")
    modalities = _modalities(args.modalities)  # (checked before the account, the manifest or the container)
    from .processes import ensure_address_space

    ensure_address_space("upload")  # (its threads' stacks too: refused, they were said as `ulimit -u` reached)
    target, to = _central(args)
    if args.script:
        from .submit.script import write_script

        script = write_script(target.db, to, kind=args.script, cloud=target.config.cloud, version=args.version_label,
                              modalities=modalities, site=args.site,
                              site_roots=target.config.site.roots)
        _write_script(script.text)
        # A command to paste: quoted for the shell, and with the manifest this script was written from.
        mark = shlex.join(["chorus-batch", "mark-uploaded", "--db", target.db, "--to", to, "--from-log", script.log])
        from .units import plural

        if not script.n_versions:  # (it crashed: "internal error: cannot concat empty list")
            from .submit.central import central_url

            print(f"chorus-batch: nothing to upload: the manifest records every version as completely uploaded to "
                  f"{central_url(to)}; the script sends nothing", file=sys.stderr)
            return 0
        print(f"chorus-batch: the script sends {plural(script.n_files, 'file')} ({plural(script.n_versions, 'version')}); "
              "after running it, "
              f"record what it sent with: {mark}", file=sys.stderr)
        if script.earlier:  # (--version: as `upload --version` says it)
            from .submit.central import central_url
            from .submit.upload import earlier_note

            print(f"chorus-batch: note: {earlier_note(args.version_label, script.earlier, central_url(to))}",
                  file=sys.stderr)
        if script.n_not_replaceable:  # AzCopy cannot replace a blob only if it is unchanged: not in this script
            print(f"chorus-batch: not in the script: {plural(script.n_not_replaceable, 'file')} whose central blob verify found "
                  "damaged (AzCopy cannot replace a blob only if it is still the damaged one); send them with "
                  "`chorus-batch upload` or `upload --script bash`", file=sys.stderr)
        if script.wildcards:  # AzCopy has no escape for a '*' in a local path: not in this script
            print(f"chorus-batch: not in the script: {plural(len(script.wildcards), 'file')} whose local path holds '*', which "
                  f"AzCopy reads as a wildcard (e.g. {script.wildcards[0]}); send them with `chorus-batch upload` or "
                  "`upload --script bash`", file=sys.stderr)
        if script.bad_escapes:  # AzCopy parses a local path as a URL path: it fails these, every time
            print(f"chorus-batch: not in the script: {plural(len(script.bad_escapes), 'file')} whose local path holds a "
                  f"'%' not followed by two hex digits, which AzCopy cannot read (\"invalid URL escape\"; e.g. "
                  f"{script.bad_escapes[0]}); send them with `chorus-batch upload` or `upload --script bash`",
                  file=sys.stderr)
        from .classify import LOCAL_ONLY_FIX, LOCAL_ONLY_WHY

        local = [name for name, why in script.bad_names if why == LOCAL_ONLY_WHY]
        if local:  # as `upload` itself: never sent, whatever validation said of the version
            are = "is" if len(local) == 1 else "are"
            print(f"chorus-batch: not in the script: {plural(len(local), 'file')} that {are} {LOCAL_ONLY_WHY} "
                  f"(e.g. {local[0]!r}); {LOCAL_ONLY_FIX}", file=sys.stderr)
        renamable = [(name, why) for name, why in script.bad_names if why != LOCAL_ONLY_WHY]
        if renamable:  # as `upload` itself: never sent, the blob would not be where the ledger says
            name, why = renamable[0]
            print(f"chorus-batch: not in the script: {plural(len(renamable), 'file')} whose name the central "
                  f"container cannot keep as it is (e.g. {name!r}: {why}); rename them in the site (the next run "
                  "records the new names), then upload again", file=sys.stderr)
        if script.n_superseded:  # (as `upload` says of them; mark-uploaded records them)
            print(f"chorus-batch: not in the script: {plural(script.n_superseded, 'file')} a later version replaced, renamed or "
                  "removed before they were sent (their bytes are no longer at that path in the site; a file that "
                  "replaced one, or its new name, goes with that later version); mark-uploaded records them as "
                  "superseded", file=sys.stderr)
        return 1 if script.n_not_replaceable or script.wildcards or script.bad_escapes or script.bad_names else 0
    from .submit.upload import upload

    overrides = {None: args.site, **target.config.site.roots} if args.site else None
    result = upload(target.db, to, cloud=target.config.cloud, version=args.version_label,
                    modalities=modalities, workers=args.workers or target.config.central.workers,
                    dry_run=args.dry_run, overrides=overrides, progress=Progress(quiet=args.quiet), argv=argv)
    with _kept_exit_code(int(result.exit_code)):
        print(json.dumps(upload_dict(result), indent=2) if args.json else upload_text(result))
    return int(result.exit_code)


def _modalities(text: str | None) -> list[str] | None:
    from .config import MODALITIES

    if not text:
        return None
    # in any letter case, as `files --modality` takes one (`--modalities waveforms` was "unknown modality")
    known = {name.lower(): name for name in (*MODALITIES, "Other")}
    names = [name.strip() for name in text.split(",")]
    if "" in names:  # (`--modalities "$A,$B"` with B unset sent A alone, and `--modalities ,` every modality)
        raise UsageError(f"--modalities {text!r}: an empty name in the comma-separated list (a shell variable not "
                         "set?); nothing was done", where="--modalities",
                         fix=f"name each modality ({', '.join(known.values())}) with a comma between two, or leave "
                             "--modalities out to send every modality")
    unknown = [name for name in names if name.lower() not in known]
    if unknown:
        raise UsageError(f"unknown modality {unknown[0]!r}", where="--modalities",
                         fix=f"use a comma-separated list of {', '.join(known.values())}")
    return list(dict.fromkeys(known[name.lower()] for name in names))


def cmd_verify(args: argparse.Namespace, argv: list[str]) -> int:
    from .progress import Progress
    from .report import verify_dict, verify_text
    from .submit.verify import verify

    target, to = _central(args)
    result = verify(target.db, to, cloud=target.config.cloud, version=args.version_label, every=args.all,
                    download=args.download, workers=args.workers or target.config.central.workers,
                    progress=Progress(quiet=args.quiet), argv=argv)
    with _kept_exit_code(int(result.exit_code)):
        print(json.dumps(verify_dict(result), indent=2) if args.json else verify_text(result))
    return int(result.exit_code)


def cmd_mark_uploaded(args: argparse.Namespace, argv: list[str]) -> int:
    from .submit.script import mark_uploaded

    target, to = _central(args)
    marked = mark_uploaded(target.db, to, args.from_log, cloud=target.config.cloud, argv=argv)
    with _kept_exit_code(int(marked.exit_code)):
        print(marked.text())
    return int(marked.exit_code)


def cmd_import_journal(args: argparse.Namespace, argv: list[str]) -> int:
    from .progress import Progress
    from .report import import_dict, import_text
    from .upstream.importer import import_journal

    target = _resolve(args)
    config = target.config
    result = import_journal(args.journal, target.db, site=target.site, site_roots=config.site.roots if target.site else None,
                            central=args.to or config.central.to, patterns=config.patterns, dry_run=args.dry_run,
                            argv=argv, cloud=config.cloud, progress=Progress(quiet=args.quiet),
                            max_delete=config.run.max_delete)
    with _kept_exit_code(int(result.exit_code)):
        print(json.dumps(import_dict(result), indent=2) if args.json else import_text(result))
    return result.exit_code


def cmd_import_config(args: argparse.Namespace, argv: list[str]) -> int:
    from .upstream.config import convert_config, write_config

    if args.force and not args.out:
        raise UsageError("--force is for --out", where="--force", fix="add --out FILE, or leave out --force")
    converted = convert_config(args.config_file)
    # "-": standard output, as `report --out -` (it wrote a file named "-")
    out = (write_config(converted.text, args.out, force=args.force, source=args.config_file)
           if args.out and args.out != "-" else None)
    for warning in converted.warnings:
        print(f"chorus-batch: warning: {warning}", file=sys.stderr)
    if out is None:  # (UTF-8, as --out writes it, whatever the code page a Windows redirect writes in)
        from .fsutil import write_stdout

        write_stdout(converted.text)
    else:
        from .units import plural

        print(f"chorus-batch: wrote {out}" + (f" ({plural(len(converted.warnings), 'warning')})"
                                              if converted.warnings else ""), file=sys.stderr)
    return int(ExitCode.FINDINGS) if converted.warnings else int(ExitCode.OK)


COMMANDS = {"run": cmd_run, "testdata": cmd_testdata, "versions": cmd_versions, "changes": cmd_changes,
            "validate": cmd_validate, "registry": cmd_registry, "upgrade": cmd_upgrade, "files": cmd_files, "diff": cmd_diff,
            "history": cmd_history, "report": cmd_report, "review": cmd_review, "unlock": cmd_unlock, "status": cmd_status,
            "slurm-script": cmd_slurm_script, "upload": cmd_upload, "verify": cmd_verify,
            "mark-uploaded": cmd_mark_uploaded,
            "import-journal": cmd_import_journal, "import-config": cmd_import_config}


def _stop_on_signals() -> None:
    """SIGTERM (Slurm, systemd, kill) and SIGHUP stop a run as Ctrl-C does: the runs row is finished,
    workers are stopped, the lock is released, and the exit code says which signal (128 + its number)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    # A second signal while the first one's stop is under way (SIGHUP then SIGTERM: a logout, then systemd) is not
    # raised again: it cut that clean-up short, said "nothing was committed" of a version the run had committed,
    # left its `runs` row unfinished, and named itself as what stopped the run.
    def stop(signum: int, _frame) -> None:
        if holding_signal(signum) or handling_stop():  # (held: raised when the renames of a set of files are done)
            return
        note_signal(signum)
        raise Stopped(signum)

    def interrupt(signum: int, _frame) -> None:  # Python's own SIGINT handler, remembered as the others
        if holding_signal(signum) or handling_stop():
            return
        note_signal(signum)
        raise KeyboardInterrupt

    forget_signals()
    sys.unraisablehook = quiet_lost_stops(sys.unraisablehook)
    import threading

    if threading.excepthook is threading.__excepthook__:  # (a test runner's own is kept)
        threading.excepthook = masked_thread_exceptions
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)

    for name in STOP_SIGNALS:
        # one the caller ignores stays ignored: `nohup chorus-batch run &` was stopped (exit 129) at logout
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:
            signal.signal(getattr(signal, name), stop)


# A version as another command asks it: `files` takes --as-of, `changes`, `report`, `review` and `registry` --version
# (`files --version` was answered "did you mean --person?", the nearest spelling; `files --at` "--path?").
_SAME_QUESTION = {"--version": ("--as-of",), "--as-of": ("--version",), "--at": ("--as-of", "--version"),
                  "--when": ("--as-of", "--version")}


def _without_idle_double_dash(argv: list[str], top_flags: set[str]) -> list[str]:
    """The command line without a `--` that ends no argument: one in the command's place (`chorus-batch -- versions
    --json`, as a wrapper passing "$@" after -- writes it), or one at the very end with nothing after it
    (`versions --db m.sqlite --`), both taken as getopt's tools take them. argparse answered the first "invalid
    choice: '--'" with the list of commands, and without the JSON error --json asks for (the --json came after a
    --), the second "unrecognized argument --" with no word of what to do."""
    at = next((i for i, word in enumerate(argv) if word not in top_flags), len(argv))
    if at < len(argv) and argv[at] == "--" and (at + 1 == len(argv) or not argv[at + 1].startswith("-")):
        argv = argv[:at] + argv[at + 1:]
    if argv and argv[-1] == "--" and argv.count("--") == 1:
        argv = argv[:-1]
    return argv


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse's parse_args (exit 2 on bad usage), saying which command or flag was probably meant."""
    commands = parser.commands  # type: ignore[attr-defined]
    top_flags = {option for action in parser._actions for option in action.option_strings}
    argv = _without_idle_double_dash(argv, top_flags)
    _Parser.words = list(argv)
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)  # top-level flags take no values
    first = None if at is None else argv[at]
    flag = argv[at - 1] if at else None
    if first is not None and first not in commands and flag and flag.split("=", 1)[0] not in top_flags:
        # A command's flag before any command: `chorus-batch --db m.sqlite versions` means versions, and
        # `chorus-batch --site DIR` means run, as `chorus-batch` alone does.
        later_at = next((i for i in range(at + 1, len(argv)) if argv[i] in commands), None)
        if later_at is not None:
            later, rest = argv[later_at], argv[:later_at] + argv[later_at + 1:]
            parser.error(f"{flag} comes before the command {later!r}; flags go after it: "
                         f"chorus-batch {later} {' '.join(command_word(word) for word in rest)}")
        argv, first = ["run", *argv], None
    if first is not None and first not in commands:
        meant = _close(first, commands)
        rest = " ".join(command_word(word) for word in argv[at + 1:])
        if first.lower() == "version" and meant:  # (`chorus-batch version`, as `git version` is said)
            hint = f"; did you mean {meant!r} (the manifest's versions), or chorus-batch --version (this program's)?"
        elif meant:
            hint = f"; did you mean {meant!r}?"
        elif first.lower() == "help":  # (`chorus-batch help run`: as git and pip take it)
            hint = f"; for help: chorus-batch {rest + ' ' if rest else ''}--help"
        elif os.path.isdir(first):  # the site's folder without --site (it was only "unknown command")
            hint = f"; to run on that folder: chorus-batch run --site {command_word(first)}{' ' + rest if rest else ''}"
        else:
            hint = ""
        parser.error(f"unknown command {quoted(first)}{hint} (commands: {', '.join(commands)})")
    args, extras = parser.parse_known_args(argv)
    if args.command is None:
        args, extras = parser.parse_known_args(["run", *argv])
    if extras:
        command = commands[args.command]
        flags = [word for word in extras if word.startswith("-") and word != "-"]
        if not flags:
            command.error(f"unrecognized arguments: {' '.join(extras)}{_stray_hint(command, args.command, extras, argv)}")
        options = [o for action in command._actions for o in action.option_strings]
        # A flag of the command's own given before it (`chorus-batch --json versions`): the top-level parser left it,
        # and "did you mean --json?" named the flag as given; the command line that puts it after is what is meant.
        at = argv.index(args.command) if args.command in argv else len(argv)
        before = [flag for flag in flags if flag.split("=", 1)[0] in options and flag in argv[:at]]
        if before:
            rest = argv[:at] + argv[at + 1:]
            parser.error(f"{before[0]} comes before the command {args.command!r}; flags go after it: "
                         f"chorus-batch {args.command} {' '.join(command_word(word) for word in rest)}")
        lines = []
        for flag in flags:
            name = flag.split("=", 1)[0]
            meant = next((o for o in _SAME_QUESTION.get(name, ()) if o in options), None) or _close(name, options)
            if name == "--path" and any(action.dest == "path" and not action.option_strings for action in command._actions):
                lines.append(f"unrecognized argument {flag}; the path is given without it: chorus-batch {args.command} PATH")
                continue
            if name in options and "--" in argv[:len(argv) - argv[::-1].index(flag) - 1]:
                # (`history -- OMOP/x.csv --db m.sqlite`: said "did you mean --db?" of --db itself)
                positional = next((a.metavar or a.dest.upper() for a in command._actions if not a.option_strings), None)
                lines.append(f"{flag} comes after --, which ends the options: " + (
                    f"every word after it is taken as the {positional} argument, never as an option; put {name} "
                    "before the --" if positional else
                    f"{args.command} takes no argument after it; leave out the --"))
                continue
            longer = [o for o in options if o.startswith(name) and o != name and name.startswith("--") and len(name) > 2]
            if longer:  # (abbreviations are refused: see _Parser)
                lines.append(f"unrecognized argument {flag}; options are not abbreviated: did you mean "
                             f"{' or '.join(longer)}?")
                continue
            # (`status --version 3` was "unrecognized argument --version", with no word of where it goes)
            elsewhere = [other for other, parser_ in commands.items() if other != args.command
                         and any(name in action.option_strings for action in parser_._actions)]
            lines.append(f"unrecognized argument {flag}" + (f"; did you mean {meant}?" if meant else "") + (
                f" ({name} is an option of {', '.join(elsewhere)}, not of {args.command}: "
                f"chorus-batch {args.command} --help shows its own)" if elsewhere else ""))
        command.error("\n".join(lines))
    _refuse_empty_values(commands[args.command], args)
    _refuse_non_utf8_names(commands[args.command], args)
    return args


def _stray_hint(command: argparse.ArgumentParser, name: str, words: list[str], argv: list[str]) -> str:
    """What a word given without its option probably is (`versions m.sqlite`, `run /data/site`): a manifest for
    --db, a folder for --site; else that the command's arguments are named."""
    options = {o for action in command._actions for o in action.option_strings}
    word = words[0]
    for option, fits in (("--db", os.path.isfile), ("--site", os.path.isdir)):
        if option in options and fits(word) and len(words) == 1:
            line = [command_word(w) for w in argv[:argv.index(word)]] + [option] + [command_word(w) for w in argv[argv.index(word):]]
            return f"; to give it as {option}: chorus-batch {' '.join(line)}"
    if not any(action.option_strings == [] and action.dest != "help" for action in command._actions):
        return f" ({name} takes no argument without an option before it: see chorus-batch {name} --help)"
    return ""


# Arguments that are names the manifest records (paths, person ids, version labels, modalities): UTF-8 text there.
_NAME_DESTS = {"path", "person", "version_label", "from_version", "to_version", "as_of", "compare_to", "modality",
               "modalities"}


def _refuse_non_utf8_names(command: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A name given in bytes that are not UTF-8 (typed in a Latin-1 terminal, `history $'caf\xe9.csv'`), which Python
    hands over with surrogates, was an 'internal error' (SQLite and polars take UTF-8 only): exit 2 naming it. The
    manifest holds no such name (a file named so is recorded as non_utf8_name, not tracked)."""
    from .urls import storable

    for action in command._actions:
        if action.dest not in _NAME_DESTS:
            continue
        value = getattr(args, action.dest, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and storable(v) != v:
                name = max(action.option_strings, key=len) if action.option_strings else (action.metavar or action.dest.upper())
                command.error(f"{name} {storable(v)} is not valid UTF-8 text (shown as \\x.. escapes): the manifest "
                              "records names as UTF-8 (a file whose name is not is recorded as non_utf8_name, not "
                              "tracked); give the name in UTF-8 (the terminal's encoding may be another: LANG)")


def _refuse_empty_values(command: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A value given empty is an unset shell variable (`--parquet $SNAPS`), never a choice: it was taken as not
    given (no snapshots, no delete list, ./chorus.toml for --config) or as the current folder (--staging,
    testdata OUT, registry --out): exit 2 naming it, before anything is done."""
    for action in command._actions:
        if action.nargs == 0 or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value == action.default:
            continue
        if any(isinstance(v, str) and not v.strip() for v in (value if isinstance(value, list) else [value])):
            name = max(action.option_strings, key=len) if action.option_strings else (action.metavar or action.dest.upper())
            # "leave it out" only where it may be left out: `report --out ""` was told to, and then that --out is required
            command.error(f"{name} is empty (an unset shell variable?): give a value"
                          + (f", or leave {name} out" if action.option_strings and not action.required else ""))


# Said when the command does not know more (a run that stopped before it opened its manifest says which version
# stays, or that a first run wrote none: pipeline.nothing_committed): true on a first run as on a later one.
NOTHING_COMMITTED = "nothing was committed; the manifest holds what it held before (`chorus-batch versions` lists it)"
# Commands that write something else than a version: what stays when they stop early.
_LEDGER_KEPT = "what the uploads ledger recorded before stays"
NOT_COMMITTED = {"upload": _LEDGER_KEPT, "verify": _LEDGER_KEPT, "mark-uploaded": _LEDGER_KEPT,
                 "import-journal": "no manifest was written (an import builds it in a temporary file it removes)",
                 "import-config": "no chorus.toml was written (--out is written whole or not at all)",
                 "status": "nothing was written (status only reads)",
                 "report": "no report was written (report only reads)",
                 "review": "no notebook was written (review only reads)",
                 # (each said what it did, as run does: "nothing was committed" is a run's word, not theirs)
                 "validate": "no findings of this check were recorded (they are stored in one transaction at its "
                             "end); the manifest's versions are as they were",
                 "registry": "the proc_ids given so far stay recorded in the manifest (the same records keep "
                             "them); the registry files in --out are as they were (they are put in place together, "
                             "once all are written)",
                 "upgrade": "the manifest was not upgraded (the upgrade is one transaction, undone when cut short)",
                 **{command: f"nothing was written ({command} only reads)"
                    for command in ("versions", "changes", "files", "diff", "history", "slurm-script")}}
# What to do after a signal, where the command then stands as NOT_COMMITTED says. Not after a failure: its own fix
# says what to do (`upgrade` of a manifest on a read-only file system was told to pass --db on a writable one, then
# "run the same command again", which fails the same way)
AGAIN_AFTER_SIGNAL = {"validate": "run the same command again", "registry": "run the same command again to write them",
                      "upgrade": "run the same command again", "upload": "run the same command again to resume",
                      "mark-uploaded": "run the same command again to resume", "verify": "run the same command again"}


def _stopped_by_signal(command: str) -> str:
    """What stands after a signal stopped `command` before it committed, and what to do."""
    stands = NOT_COMMITTED.get(command, NOTHING_COMMITTED)
    return f"{stands}; {AGAIN_AFTER_SIGNAL[command]}" if command in AGAIN_AFTER_SIGNAL else stands


# The arguments that name a local file or folder of the machine (not a site-relative path, not a URL), as `_expand_home`
# names them in a message
_HOME_PATHS = {"out": "--out", "config": "--config", "delete_list": "--delete-list", "parquet": "--parquet",
               "staging": "--staging", "merge": "--merge", "from_log": "--from-log", "journal": "JOURNAL",
               "config_file": "CONFIG"}


# those of them that take no URL of any kind (a URL there was a folder 's3:' made in the working folder)
_LOCAL_ONLY = frozenset({"out", "config", "delete_list", "from_log", "config_file"})


# what some of them name, in a message about the name itself
_NAMES = {"parquet": "the snapshot folder's name", "staging": "the staging folder's name",
          "merge": "the staging folder's name", "config": "the config file's name", "config_file": "the config file's name"}


def _expand_home(args: argparse.Namespace) -> None:
    """A quoted '~' in a path argument (a cron line, a unit file: no shell to expand it) is the home folder, in every
    command, as --db and --site read it: report/review --out "~/x.html" said "its folder ~ does not exist", and
    import-config --out and testdata OUT made a folder named '~' in the working folder; --config "~/chorus.toml" was
    "config file not found: ~/chorus.toml" (a systemd unit's ExecStart expands no '~'), --delete-list, --parquet
    and the others alike."""
    from .urls import (expand_home, refuse_blank_ends, refuse_secret_path, refuse_too_long, refuse_url,
                       refuse_windows_path)

    for dest, name in _HOME_PATHS.items():
        value = getattr(args, dest, None)
        given_as = "OUT" if dest == "out" and args.command == "testdata" else name  # (testdata's OUT is positional)
        if isinstance(value, str):  # (first: the checks below quote the value)
            refuse_secret_path(value, given_as)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, dest, expand_home(value, given_as))
        if isinstance(value, str) and dest in _LOCAL_ONLY:  # (JOURNAL takes az://; --staging, --merge and
            # --parquet say their own)
            refuse_url(getattr(args, dest), given_as, writes=dest == "out")
        if isinstance(value, str):
            # `--out "$OUT"` read from a file with Windows line ends: a report written as 'r.html\r' beside the one
            # looked for, a --config 'c.toml\r' "not found" while c.toml is there (said as --db's is)
            refuse_blank_ends(getattr(args, dest), given_as, _NAMES.get(dest, "the file or folder name"))
            # (`--parquet 'C:\snaps'`, `--out 'D:\r.html'` pasted from the Windows machine's notes: a folder or file of
            # that name made in the working folder, as --db's was)
            # ('-': standard output where --out says so, registry's --out says its own; elsewhere a file or folder
            # named '-' was made or looked for)
            dash = ("stdout" if dest == "out" and args.command in ("report", "review", "import-config", "registry")
                    else "stdin" if dest in ("config", "config_file", "delete_list", "from_log") else "")
            refuse_windows_path(getattr(args, dest), given_as, dash=dash)
            if dest not in ("config", "config_file"):  # (those are read at once, and why_unreadable says why)
                refuse_too_long(getattr(args, dest), name)


# Commands main does not hold to the address space a run maps: those that check it at their own moment (run, not
# with --slurm, which only submits), and those whose work needs none of polars' and DuckDB's thread pools.
_ADDRESS_SPACE_NOT_HERE = frozenset({"run", "status", "validate", "upload", "testdata", "import-config",
                                     "slurm-script", "unlock"})


def main(argv: list[str] | None = None) -> int:
    # Owner-only whatever the caller's umask (a cron line without `umask 077`): besides the outputs chmodded to
    # 0600, scratch files made by libraries (upload's manifest copy, DuckDB's review database and WAL, SQLite's
    # -wal/-shm) took the umask's mode, 0666 under umask 000, while they held person ids. Given back at the end.
    previous = os.umask(0o077)
    try:
        return _main(argv)
    finally:
        os.umask(previous)


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = _parse(parser, argv)
    from .progress import setup_logging

    setup_logging(verbose=args.verbose, quiet=args.quiet)
    pause("arguments-read")  # (tests: Ctrl-C before the command's own handling begins)
    _stop_on_signals()
    stdout, sys.stdout = sys.stdout, _Output(sys.stdout, _writes_a_manifest(args))  # type: ignore[assignment]
    code = int(ExitCode.OK)
    try:
        # (serving_command_line: messages name the flags, --db, --from, not the library's arguments)
        with signals_unwrapped(), serving_command_line():  # a signal a library wrapped (DuckDB) is said as the signal
            from .config_file import check_environment, check_working_folder

            check_working_folder()
            check_environment()
            _expand_home(args)
            if stdout is None:
                _refuse_closed_output(args)
            if args.command not in _ADDRESS_SPACE_NOT_HERE:
                from .processes import ensure_address_space

                # Before the libraries load: the nightly report, registry and changes load polars and DuckDB as a
                # run does, and under `ulimit -v` 2 GB aborted in their native code (exit 127/134, no word of ours).
                ensure_address_space(args.command)
            code = COMMANDS[args.command](args, argv)
            work_starts()  # (a command that wrote nothing to the closed standard output it makes: refused at its end)
            sys.stdout.flush()  # the output's last bytes: a failure to write them is said here, not lost at exit
            return code
    # What was recorded when a command stops early: its own word (`outcome`: an upload's ledger), else
    # a version committed before a signal, else what the command writes (NOT_COMMITTED).
    except ChorusError as exc:
        config = getattr(args, "config_read", None)
        if config is not None:  # a setting of chorus.toml refused after it was read: with its file and line
            exc.where = config.where_written(exc.where, exc.what, site_given=bool(getattr(args, "site", None)),
                                             db_given=bool(getattr(args, "db", None)), db=config.manifest.db,
                                             given_flags={name.replace("_", "-") for name, value in vars(args).items()
                                                          if value not in (None, False, [], "")})
            if exc.what.startswith("--db ") and (exc.where or "").endswith(f"[manifest] db ({config.manifest.db})"):
                exc.what = "[manifest] db " + exc.what[len("--db "):]  # (the store's word for the manifest path)
        outcome = getattr(exc, "outcome", None) or (
            NOTHING_COMMITTED if args.command == "run" and exc.exit_code == ExitCode.FAILED
            and getattr(exc, "committed", None) is None else None)
        if outcome is None and exc.exit_code == ExitCode.FAILED and getattr(exc, "committed", None) is None:
            # the manifest or an output failed under the command (a full disk, an I/O error): said with what stands,
            # as the command's own words on a signal say (`upgrade` on a full disk: nothing of the upgrade; `registry`
            # with a full --out: the files there as they were)
            outcome = NOT_COMMITTED.get(args.command)
        _print_error(exc, outcome)
        committed = getattr(exc, "committed", None)
        if outcome is None and committed:  # (a failure after the commit: its message says so, `outcome` must too:
            # a script reading it got null, as of a usage error, for a version that stays)
            outcome = committed_stays(committed)
        _json_error(args, int(exc.exit_code), exc.what, where=exc.where, fix=exc.fix, outcome=outcome)
        return int(exc.exit_code)
    except (KeyboardInterrupt, Stopped) as exc:
        how = {int(ExitCode.HANGUP): "hung up (SIGHUP)", int(ExitCode.TERMINATED): "terminated (SIGTERM)",
               int(ExitCode.USER_SIGNAL): "stopped by SIGUSR1 (Slurm sends it before a job's time limit with --signal)",
               int(ExitCode.SECOND_USER_SIGNAL): "stopped by SIGUSR2 (Slurm sends it before a job's time limit with "
                                            "--signal=USR2)",
               int(ExitCode.QUIT): "quit (Ctrl-\\, SIGQUIT)",
               int(ExitCode.BREAK): "stopped by Ctrl-Break (SIGBREAK)",
               int(ExitCode.CPU_LIMIT): "stopped by SIGXCPU: the CPU-time limit was reached (`ulimit -t`, the batch "
                                        "system's CPU limit; raise it for this job)"}
        code = exc.exit_code if isinstance(exc, Stopped) else int(ExitCode.INTERRUPTED)
        committed = getattr(exc, "committed", None)
        outcome = getattr(exc, "outcome", None) or (f"version {committed} had been committed before; it stays" if committed
                                                     else _stopped_by_signal(args.command))
        upgraded = getattr(exc, "upgraded", None)  # the schema upgrade's commit had ended when the signal was raised
        if upgraded:
            done = f"the upgrade of the manifest from schema {upgraded[0]} to {upgraded[1]} had been committed and stays"
            outcome = f"{done} (nothing else was done)" if args.command == "upgrade" else f"{outcome}; {done}"
        if getattr(exc, "validated", None) and args.command == "validate":  # its one transaction had been committed
            outcome = (f"the findings of this check of version {exc.validated} had been recorded before the signal "
                       "came; they stay (`chorus-batch validate` shows them)")
        print(shown(f"chorus-batch: {how.get(code, 'interrupted')}; {outcome}"), file=sys.stderr)
        _json_error(args, code, how.get(code, "interrupted"), outcome=outcome)
        return code
    except BrokenPipeError as exc:  # the reader left (`| head`): quietly, but with the command's own exit code
        return getattr(exc, "exit_code", code)
    except Exception as exc:  # an unexpected failure: a message, the details in the log at debug level
        log.debug("unexpected error", exc_info=True)
        from .urls import scrub

        known = machine_limit(exc)  # a limit of the machine's, not a fault of ours: said as one
        outcome = getattr(exc, 'outcome', None) or NOT_COMMITTED.get(args.command, NOTHING_COMMITTED)
        if known is not None:
            print(shown(scrub(f"chorus-batch: error: {known}\n  {shown(outcome)}"), lines=True), file=sys.stderr)
            _json_error(args, int(known.exit_code), known.what, where=known.where, fix=known.fix, outcome=outcome)
            return int(known.exit_code)
        fix = "rerun with -v for details, and report it with that output"
        print(shown(scrub(f"chorus-batch: internal error: {type(exc).__name__}: {shown(str(exc))}\n  {shown(outcome)}.\n"
                          f"  fix:   {fix}"), lines=True), file=sys.stderr)
        _json_error(args, int(ExitCode.FAILED), f"internal error: {type(exc).__name__}: {exc}", fix=fix, outcome=outcome)
        return int(ExitCode.FAILED)
    finally:
        sys.stdout = stdout
        hold_until_work(None)  # (main called again in one process: nothing held over)


def _print_error(exc: ChorusError, outcome: str | None = None) -> None:
    """An expected error on stderr: what happened, where, what to do, then what stands; secrets in what it
    quotes masked (a SAS given where a version label or a file goes)."""
    from .urls import scrub

    print(shown(scrub(f"chorus-batch: error: {exc}"), lines=True), file=sys.stderr)
    if outcome:  # (one line: it names the manifest, whose path may hold a line break)
        print(shown(scrub(f"  {outcome}")), file=sys.stderr)


def _json_error(args: argparse.Namespace, code: int, error: str, **details: str | None) -> None:
    """--json: a command that fails says so on stdout too, as one JSON object (`error`, `where`, `fix`, `outcome`,
    `exit_code`), so that a script parsing stdout gets why instead of nothing. Not after output of the command's own
    (a second object would make the first unreadable), nor when stdout itself failed."""
    if not getattr(args, "json", False) or getattr(sys.stdout, "used", True):
        return
    _print_json_error(code, error, **details)


def _print_json_error(code: int, error: str, **details: str | None) -> None:
    """The error object of a failing command (also argparse's refusals, before a command is known), secrets masked.
    Every field is there, null where the command has nothing to say (a usage error's outcome): a script reading
    `outcome` found no such key."""
    from .urls import scrub

    fields = {"where": None, "fix": None, "outcome": None} | details
    with contextlib.suppress(Exception):  # (stdout gone too: stderr has said it)
        print(json.dumps({"error": scrub(error), **{k: scrub(v) if v else None for k, v in fields.items()},
                          "exit_code": code}, indent=2))
        sys.stdout.flush()


def _refuse_closed_output(args: argparse.Namespace) -> None:
    """Standard output closed (`>&-`) where it is what the command makes (`report --out -`, `import-config` with no
    --out, a listing, a dry run's account, a script): a closed stdout takes nothing, and `report --out -` said "wrote
    the report to standard output", exit 0, of a page written nowhere (`files --md5sum >&- && echo ok` said ok of a
    list written nowhere).

    The refusal (exit 3) is said when the command first writes, or where it would start its work (_output_checked,
    also where a site's listing starts): a usage error the command finds in its arguments (`files --as-of nosuch >&-`,
    `report --version nosuch --out - >&-`, `upload --script bash --version nosuch >&-`) is said as one, exit 2, in
    every command alike. It was so for the listing commands alone, and the others said the closed output, exit 3, of a
    command line that was wrong: a cron wrapper took a line to fix for a failed night. None of these commands changes
    anything before it writes (a dry run, `upload --script` and `import-config` record nothing)."""
    out = getattr(args, "out", None)
    if args.command in ("report", "review") and out == "-" or args.command == "import-config" and out in (None, "-"):
        made = {"report": "the report", "review": "the executed notebook",
                "import-config": "the converted chorus.toml"}[args.command]
        refused = OutputError(f"standard output is closed (`>&-`): {made} would be written nowhere",
                              where="standard output", fix="give --out FILE, or start the command with standard "
                              "output open (`> FILE`)")
    elif _output_is_the_product(args):
        shape = next((f"its {word}" for flag, word in (("json", "JSON"), ("csv", "CSV"), ("md5sum", "md5sum list"))
                      if getattr(args, flag, False)), "its output")
        refused = OutputError(f"standard output is closed (`>&-`): {shape}, all that `{args.command}` makes here, "
                              "would be written nowhere", where="standard output",
                              fix="start the command with standard output open (`> FILE`; `> /dev/null` to discard "
                              "it)")
    else:  # (`registry --out -` is a usage error of its own: the registries are files in a folder)
        return
    refused.outcome = "nothing was done"
    hold_until_work(refused)


def _output_checked() -> None:
    """Where a command whose product is standard output starts its work (after its arguments are checked): a closed
    standard output is refused here (see _refuse_closed_output), before the work, not at its first write."""
    work_starts()


# Commands whose one product is what they print (they change nothing, or only record what they print).
_PRINTING_COMMANDS = frozenset({"status", "versions", "changes", "validate", "files", "diff", "history",
                                "slurm-script"})


def _output_is_the_product(args: argparse.Namespace) -> bool:
    """Standard output is all the command makes: a listing, a check's findings, a dry run's account, a script. Not
    so for `run`, `upload`, `verify`, ...: their product is a version, blobs, ledger rows (their summary, `--json`
    too, is an account of it, and a closed stdout loses only that; `run` says on stderr what it committed)."""
    if args.command in _PRINTING_COMMANDS:
        return True
    if args.command == "upload":
        return bool(getattr(args, "dry_run", False) or getattr(args, "script", None))
    return args.command in ("run", "import-journal") and bool(getattr(args, "dry_run", False))


def _writes_a_manifest(args: argparse.Namespace) -> bool:
    """Whether the command may have recorded something in a manifest before its output failed (a version, ledger rows,
    findings, proc_ids, an upgrade), so that its fix points at what the manifest holds. `testdata`, `slurm-script`,
    `import-config`, the dry runs, `upload --script` and the reading commands record nothing: "`chorus-batch
    versions` shows what the manifest holds" was said of them too (`testdata > /dev/full`, where there is none)."""
    if args.command in ("run", "import-journal", "upload"):
        return not (getattr(args, "dry_run", False) or getattr(args, "script", None))
    return args.command in ("validate", "registry", "upgrade", "unlock", "verify", "mark-uploaded")


class OutputError(ChorusError):
    """The command's output could not be written to standard output (a full disk, a closed descriptor)."""

    outcome = "what the command did before stands; only its output could not be written"


class _Output:
    """Standard output for a command: a write that fails (other than a closed pipe, which ends the command quietly)
    is an OutputError with what/where/fix, not an internal error; a closed descriptor takes nothing."""

    def __init__(self, stream, manifest_written: bool = False):
        self._stream = stream
        # the fix of a failed write names `versions` where the command may have recorded something in a manifest
        # (validate of a folder in a temporary manifest sets it False: it leaves none)
        self.manifest_written = manifest_written
        self.used = False  # something was written (main's --json error object is then left out)
        # On a terminal, what a name holds is shown, not obeyed (escape sequences); a file or pipe gets the bytes.
        self._terminal = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def _guarded(self, call, *args):
        if self._stream is None:  # started with stdout closed (>&-)
            return None
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: a stream closed under us
            raise OutputError(f"could not write the output to standard output ({getattr(exc, 'strerror', None) or exc})",
                              where="standard output", fix="write it where there is room (another file or folder), "
                              "or leave stdout to the terminal" + ("; `chorus-batch versions` shows what the manifest "
                                                                   "holds" if self.manifest_written else "")) from None

    def write(self, text: str) -> int:
        _output_checked()
        self.used = self.used or bool(text)
        text = shown(text, lines=True) if self._terminal else text
        written = self._guarded(self._write_all, text) if self._stream is not None else None
        return len(text) if written is None else written

    def _write_all(self, text: str) -> int:
        """Under PYTHONUNBUFFERED=1 (or -u) the text layer writes straight to the descriptor and drops what a short
        write left: a reader leaving mid-page (`report --out - | head -1`) cut the page without an EPIPE, and the
        command said "wrote the report". So then the bytes are written here until all are taken or the pipe is
        closed (BrokenPipeError, as with a buffered stdout)."""
        raw = getattr(self._stream, "buffer", None)
        if not isinstance(raw, io.RawIOBase):
            return self._stream.write(text)
        self._stream.flush()
        data = memoryview(text.encode(self._stream.encoding, self._stream.errors or "strict"))
        while data:
            data = data[raw.write(data) or 0:]
        return len(text)

    def flush(self) -> None:
        # (not the held refusal: a flush is no work, and libraries flush the streams of their own accord, as
        # multiprocessing does before it starts a process: `run --dry-run --delete-list x >&-` was refused there)
        if self._stream is not None:
            self._guarded(self._stream.flush)

    @property
    def buffer(self) -> _OutputBytes:
        """The byte stream under it (`--md5sum` writes bytes), guarded alike: `files --md5sum > /dev/full` was an
        internal error (OSError), where the other outputs say what happened."""
        return _OutputBytes(self)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _OutputBytes:
    """`_Output.buffer`: writes bytes whole (a short write of an unbuffered stdout is written on), a failure an
    OutputError; a closed descriptor takes nothing."""

    def __init__(self, output: _Output):
        self._output = output

    def write(self, data: bytes) -> int:
        _output_checked()
        self._output.used = self._output.used or bool(data)
        stream = self._output._stream
        if stream is None:
            return len(data)

        def write_all() -> int:
            view = memoryview(data)
            while view:
                view = view[stream.buffer.write(view) or 0:]
            return len(data)
        return self._output._guarded(write_all)

    def flush(self) -> None:
        _output_checked()
        if self._output._stream is not None:
            self._output._guarded(self._output._stream.buffer.flush)


# polars' allocator (jemalloc on Linux) keeps the pages a large frame freed for the next frame: `import polars`
# sets 0.5 s, then 1 s more during which they still count as the process's memory (RSS). A run frees a million-row
# frame after each step, and the pages of the steps piled up: 1M-file runs held about 1 GB from hashing to
# validation, of which their steps needed at most 870 MiB at once (memory_profile.py run with decays 0). Given back
# after 100 ms (GNU time, 1M-file tree, 2 cores): no-change run 969-1,002 -> 836-880 MiB. Decays of 0 held less
# (741-766 MiB) but made a 1M-row merge 30% slower (its partitions' frames were faulted in again each time);
# 100 ms is as fast as polars' default (merge_benchmark.py --rows 1000000, interleaved: 8.8 / 2.7 / 1.0 s against
# 8.8 / 2.8 / 1.2 s). jemalloc reads it once, when polars is first imported: so it is set before any command does.
ALLOCATOR_SETTINGS = "dirty_decay_ms:100,muzzy_decay_ms:0"
_ALLOCATOR_VARIABLE = "_RJEM_MALLOC_CONF"
# What `import polars` puts in front of that variable (and so what a process that imported polars, such as a
# notebook or a benchmark, passes on to the commands it starts): not a setting of the user's.
_POLARS_DEFAULT = "dirty_decay_ms:500,muzzy_decay_ms:1000"


def return_freed_memory() -> None:
    """Make polars' allocator give freed memory back to the system soon (ALLOCATOR_SETTINGS), unless the user
    set its decay themselves in _RJEM_MALLOC_CONF; has an effect only before polars is imported (the command
    line's entry; worker processes inherit it)."""
    own = os.environ.get(_ALLOCATOR_VARIABLE, "")
    while own.startswith(_POLARS_DEFAULT):
        own = own[len(_POLARS_DEFAULT):].lstrip(",")
    if "decay_ms" not in own:  # later options win: polars' default, then the user's others, then these
        os.environ[_ALLOCATOR_VARIABLE] = ",".join(part for part in (own, ALLOCATOR_SETTINGS) if part)


def in_utf8_mode() -> None:
    """Run in Python's UTF-8 mode whatever the locale. A site's file names are UTF-8 (one that is not is recorded
    as such: walk.name_error), but Python decodes them with the locale's encoding: under LANG=C with its own UTF-8
    coercion off (PYTHONUTF8=0; cron, a minimal container), a valid name such as 'ünïcödé.txt' read as undecodable
    and a run recorded the file as removed. So such a process starts again once, with -X utf8. Output that its
    stream's encoding cannot hold (PYTHONIOENCODING=ascii) is written escaped, never a failed command."""
    def utf8(encoding: str | None) -> bool:
        return (encoding or "").lower().replace("-", "") == "utf8"

    if os.name == "posix" and not sys.flags.utf8_mode and not utf8(sys.getfilesystemencoding()):
        os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])
    codecs.register_error(_BYTES_ESCAPED, _bytes_escaped)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(AttributeError, ValueError):  # (replaced by a caller: left as it is)
                stream.reconfigure(errors=_BYTES_ESCAPED)


# A path's bytes that are not UTF-8 (decoded with surrogates), written by any message as \xe9, as urls.storable and
# units.shown_name write them: standard error wrote "wrote o\udce9.toml", standard output the raw byte (t�/first
# on a UTF-8 terminal), and the site root's message t\xe9. Whatever else the stream's encoding cannot hold
# (PYTHONIOENCODING=ascii) is written as \\u escapes (é as \\u00e9, never as the byte \\xe9), never a failed command.
_BYTES_ESCAPED = "chorus_batch.bytes_escaped"


def _bytes_escaped(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else
                   f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}" for c in bad), exc.end


class _Messages:
    """Standard error for a command: a message that cannot be written (a full disk, /dev/full, a reader gone) is lost,
    not the command's exit code. The OSError a failed error message raised ended the interpreter with exit 1, "success
    with findings", for a usage error (2) or a failed run (3)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # (ValueError: a stream closed under us)
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def entry() -> None:
    """Console-script and `python -m` entry: run, flush, and leave without the
    interpreter's teardown. Every resource is closed by then (pools, SQLite, DuckDB,
    the lock); tearing down a heap of a million-row run only costs 0.2-0.3 s."""
    try:  # Ctrl-C before main's own handling begins (arguments read, handlers installed): one line, exit 130
        from .fsutil import private_streams, standard_streams_open  # (its imports take a while: tempfile, shutil)

        standard_streams_open()  # first: before any file or pipe can take descriptor 0, 1 or 2
        private_streams()  # (what is said names person folders: a file it goes to is owner-only)
        in_utf8_mode()
        if sys.stderr is not None:
            sys.stderr = _Messages(sys.stderr)  # type: ignore[assignment]
        return_freed_memory()
        from .processes import cap_library_threads, library_defaults

        cap_library_threads()
        library_defaults()
        code = main()
    except KeyboardInterrupt:
        interrupted_at_start()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # (closed at start: >&-)
                stream.flush()
        except (OSError, ValueError):  # said by main already; nothing more to write it to
            pass
    logging.shutdown()
    os._exit(code)
