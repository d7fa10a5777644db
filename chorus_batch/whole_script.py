"""The first lines of a bash script chorus-batch writes (`upload --script`, `slurm-script`): it runs only whole.

A script cut short while it was written (a full disk, chorus-batch stopped) ran its first lines: part of the files
sent, or the shards queued and no merge. Its last line is a known one (END_LINE of each): without it, nothing runs.
That check reads the script's own file, BASH_SOURCE's (sourced from another script, $0 is that other script). Piped
into bash (`... | bash`, `ssh host bash -s < FILE`) or given as `bash <(...)` there is none, and one cut short
mid-pipe ran its first lines: not read from its file, it does nothing. Given as `bash -c "$(cat FILE)"`, its own text
is checked. Pasted into an interactive shell it is left to run (an exit here would close the user's terminal)."""

from __future__ import annotations

import shlex


def whole_script_lines(end_line: str, *, what: str, cut_effect: str, nothing: str, save: str, again: str,
                       prefix: str = "") -> list[str]:
    """The bash lines that refuse a script not read whole: `what` names it ("this upload script"), `cut_effect` is
    what one cut short did, `nothing` what was not done, `save` how to run it from a file, `again` the command that
    writes it again; `prefix` begins each message."""
    end = shlex.quote(end_line)
    return [
        'script_file="${BASH_SOURCE[0]:-$0}"',
        'case $- in *i*) ;; *) if [ ! -f "$script_file" ] && [ -z "${BASH_EXECUTION_STRING+set}" ]; then',
        f'  echo "{prefix}{what} is not read from its own file ($script_file: piped into bash, or given as <(...)), so it '
        f'cannot check that it arrived whole (one cut short {cut_effect}); {nothing}: {save}" >&2',
        "  exit 2",
        "fi ;; esac",
        'script_name="$script_file"',
        'if [ -n "${BASH_EXECUTION_STRING+set}" ]; then',
        '  script_name="the script given to bash -c"',
        "  last_line=\"${BASH_EXECUTION_STRING%$'\\n'}\"",
        "  last_line=\"${last_line##*$'\\n'}\"",
        'elif [ -f "$script_file" ]; then',
        '  last_line="$(tail -n 1 -- "$script_file")"',
        "else",
        f"  last_line={end}  # (pasted into an interactive shell: nothing to check)",
        "fi",
        f'if [ "$last_line" != {end} ]; then',
        f'  echo "{prefix}$script_name is incomplete (its last line is missing: the disk filled, or chorus-batch was '
        f'stopped, while it was written); {nothing}: write it again with {again}" >&2',
        "  exit 2",
        "fi",
        "unset script_file script_name last_line  # (pasted into a shell: not left in it)",
    ]
