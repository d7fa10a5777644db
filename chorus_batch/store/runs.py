"""What a `runs` row says, in words: what a run's exit code means happened (`run_outcome`), what to do about it
(`run_advice`), and its message as a reviewer may see it (`run_message`). One place for the review API, the report
and the manifest's own "no versions yet" (validate, changes, files)."""

from __future__ import annotations

import re

KILLED_EXIT = 137  # a run that died without recording its outcome, in `runs`: 128 + SIGKILL, as a shell or Slurm says it
RUN_OK_CODES = (0, 1)  # a run that ended well: a version committed, or nothing to commit (1: with findings)
_SIGNALS = {129: "SIGHUP", 130: "Ctrl-C (SIGINT)", 131: "SIGQUIT", 138: "SIGUSR1", 140: "SIGUSR2",
            143: "SIGTERM", 149: "Ctrl-Break", 152: "SIGXCPU (the CPU-time limit)"}


def run_outcome(exit_code: int | None, version: str | None) -> str:
    """What a `runs` row's exit code says happened, in a few words."""
    if exit_code is None:
        return "not finished: still running, or killed (the next run records which)"
    done = f"version {version} committed" if version else "no version committed"
    if exit_code == 0:
        return done if version else "nothing to commit (no file changed)"
    if exit_code == 1:
        return f"{done}, with findings" if version else "nothing to commit; with findings (scan or validation errors)"
    said = {2: "refused: bad usage or configuration", 3: "failed", 4: "refused: the manifest was locked by another run",
            5: "refused: it would remove too many files, or a root listed none (or none its exclusion globs kept)",
            KILLED_EXIT: "killed without a word (SIGKILL, a time limit, the out-of-memory killer, a reboot)"}
    what = said.get(exit_code) or (f"stopped by {_SIGNALS[exit_code]}" if exit_code in _SIGNALS else
                                   f"ended with exit code {exit_code}")
    return f"{what}; {done}"


def run_advice(exit_code: int | None) -> str:
    """What to do about a run that ended so (empty for one that ended well)."""
    if exit_code is None:
        return "if no run is going on now, the next run records it as killed"
    if exit_code in RUN_OK_CODES:
        return ""
    advice = {
        2: "fix the command line or chorus.toml as the message says (the cron line, its variables)",
        3: "fix what the message names (a full disk: free space; a site not mounted: mount it), then run again",
        4: "runs overlap: if every night is refused, a run takes longer than the time between them (start them "
           "further apart); else find what held the manifest (the message names its command)",
        5: "check that the site is mounted and complete, and the exclusion globs; if the removals are real, run once "
           "with --max-delete all (a first run that lists nothing to record: give it the folder that holds OMOP/ and "
           "the person folders)",
        KILLED_EXIT: "look for what killed it (dmesg or journalctl: the out-of-memory killer; the job's time or memory "
                "limit; a reboot) and give the run the memory or time it needs; the next run resumes from its checkpoint",
    }.get(exit_code)
    if advice is None and exit_code in _SIGNALS:
        advice = ("if the signal was not meant (a shutdown, systemd's or Slurm's stop at a time limit), give the run "
                  "the time it needs; the next run resumes from its checkpoint")
    return advice or "read the message and that night's log"


# A user a message names: the lock's "(user NAME)" of the run that held it
_USER_SAID = re.compile(r"\(user [^)]*\)")


def run_message(message: str, roots: list[str]) -> str:
    """A `runs` message as the report and `runs()` show it: secrets are masked when it is recorded (urls.scrub);
    here a path inside a recorded root is cut at the root (the folder after it is a person's: `<root>/…`), the home
    folder is written `~`, and a user the lock's holder was run by is left out (a person's name)."""
    import os

    from ..urls import scrub

    text = scrub(message)
    for root in sorted((r.rstrip("/") for r in roots if r and r.rstrip("/")), key=len, reverse=True):
        # (what ends a sentence after the path is kept: "cannot read <root>/…: Input/output error")
        text = re.sub(re.escape(root) + r"/[^\s'\"`;,)]+?(?=[:.]*(?:[\s'\"`;,)]|$))",
                      lambda _found, root=root: f"{root}/…", text)
    home = os.path.expanduser("~").rstrip("/")
    if home and home != "~" and os.path.isabs(home):
        text = re.sub(re.escape(home) + r"(?=/|\b)", "~", text)
    return _USER_SAID.sub("(user not shown)", text)
