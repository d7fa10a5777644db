"""How sizes (and names) are written for people: one formatter, so the run summary, the progress lines,
the HTML report and its plot axes use the same (binary, IEC) units; `shown` for text on a terminal."""

from __future__ import annotations

import re
import unicodedata

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float | None, *, significant: int | None = None) -> str:
    """'512 B', '1.5 KiB', '3.2 GiB'; '' for None. With `significant`, that many significant
    digits in every unit ('1.23 KiB', '500 B'), as plot ticks want."""
    if n is None:
        return ""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    if significant is not None:
        return f"{value:.{significant}g} {unit}"
    return f"{round(value):,} B" if unit == "B" else f"{value:,.1f} {unit}"


def plural(n: int, word: str, many: str | None = None, *, grouped: bool = False) -> str:
    """'1 file', '2 files', '0 errors': the count and the word, in the plural unless the count is one
    (`many` for a word whose plural is not word + 's'); `grouped`: '12,000 files'."""
    count = f"{n:,}" if grouped else str(n)
    return f"{count} {word if n == 1 else (many or word + 's')}"


def counted(n: int, word: str, many: str | None = None) -> str:
    """'1 file', '12,000 files': plural with the count's thousands grouped, as the HTML report and the review
    notebook say every count (the notebook said "3006 scan errors" of what the report said "3,006 scan errors")."""
    return plural(n, word, many, grouped=True)


def number(n: float | None) -> str:
    """A count or a measure as the HTML report and the review notebook write it: thousands grouped ('3,006'), a
    fraction to one decimal ('2.5'); '' for None or NaN."""
    import math

    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.1f}"
    return f"{int(n):,}"


def named(word: str, items: list[str], many: str | None = None) -> str:
    """'column a', 'columns a, b': the word, in the plural unless one item is named, then the items."""
    return f"{word if len(items) == 1 else (many or word + 's')} {', '.join(items)}"


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str, *, lines: bool = False) -> str:
    """Text as a person's terminal may show it: control characters written as escapes (\\x1b, \\n): a file named with
    an escape sequence must not retitle or clear the terminal, nor a line break in a name split a table's row.
    `lines`: line breaks and tabs kept (a message of several lines)."""
    return (_CONTROLS_BUT_LINES if lines else _CONTROLS).sub(lambda m: repr(m.group())[1:-1], text)


def shown_name(name: str | None) -> str:
    """A path (or a person or session id) as text output shows it: as it is where what it shows is all it holds,
    else quoted with Python's escapes, so that two names never look alike: a space at either end ('trail.csv ',
    beside trail.csv), a control, format or odd space character (a tab, a zero-width space, a right-to-left
    override, a no-break space: \t, \u200b, \u202e, \xa0) or a decomposed letter ('cafe\u0301.csv', beside
    café.csv, its composed twin). A name starting with a quote is quoted too: no name shows as another's quoted
    form. '' for None. Machine outputs keep names exact (JSON, --md5sum) or reversibly quoted (CSV: report.spreadsheet); this is for people."""
    if name is None:
        return ""
    if name.isprintable() and name == name.strip() and not name.startswith(("'", '"')) \
            and unicodedata.is_normalized("NFC", name):
        return name
    quoted = _bytes_as_bytes(repr(name))  # escapes what isprintable() refuses: controls, format characters, separators but " "
    if not unicodedata.is_normalized("NFC", name):  # the combining marks that make it look like its NFC twin
        quoted = "".join(f"\\u{ord(c):04x}" if unicodedata.combining(c) else c for c in quoted)
    return quoted



def quoted(text: str) -> str:
    """A value the user typed (a glob, a label, a path), quoted in a message as it was typed: 'a\\b' (repr's
    'a\\\\b' doubled the backslash, which was then copied back doubled), unless it holds what a terminal would not
    show as it is (a control or odd space character, a decomposed letter): then shown_name's escapes."""
    said = shown_name(text)
    return said if said != text else f"'{text}'" if "'" not in text else f'"{text}"'


def unshown_name(text: str) -> str | None:
    """The name that text output shows as `text` (shown_name's quoted form, copied from a table into a command),
    or None where `text` is no such form. Exact: only a text that shown_name gives back for the name it reads
    as; a name as typed is another name (a name starting with a quote is always quoted, so never shown as this)."""
    if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0]:
        return None
    import ast

    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return None
    return node.value if node.value != text and shown_name(node.value) == text else None


def shown_text(text: str | None) -> str:
    """A message that embeds paths (a validation finding, a scan error: 'its path differs from OMOP/café.csv
    only in ...') as text output shows it: every character shown_name would escape in a name is escaped where it
    stands (a no-break space, a zero-width space, a right-to-left override that reorders the rest of the line, a
    tab: \xa0, \u200b, \u202e, \t), and in text that is not NFC the combining marks too ('cafe\u0301'
    beside 'café'), so two findings about look-alike names never read the same. The message is not quoted (it is
    prose); '' for None. Machine outputs (JSON, CSV) keep messages exact."""
    if text is None:
        return ""
    composed = unicodedata.is_normalized("NFC", text)
    if text.isprintable() and composed:
        return text
    return "".join(c if c.isprintable() and (composed or not unicodedata.combining(c))
                   else f"\\u{ord(c):04x}" if c.isprintable() else _bytes_as_bytes(repr(c))[1:-1] for c in text)


# A byte of a name that is not UTF-8 (a Latin-1 path), as Python decodes it: a lone surrogate U+DC80..U+DCFF, which
# repr() writes as '\udce9'. Shown as the byte it is, \xe9, as every message that names such a path says it (urls.storable).
_SURROGATE_BYTE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def _bytes_as_bytes(quoted: str) -> str:
    """repr() text with the escapes of surrogate-decoded bytes written as the bytes (\\xe9, not \\udce9)."""
    return _SURROGATE_BYTE.sub(lambda m: f"{m.group(1)}\\x{m.group(2)}", quoted) if "\\udc" in quoted else quoted


def text_width(text: str) -> int:
    """The columns a terminal gives `text`: two for a wide character (CJK, most emoji: East Asian Width W or F),
    none for a combining mark or a zero-width format character, one otherwise. len() counted each as one, so a
    table row holding a Japanese name or an emoji pushed its next columns right of the header's."""
    return sum(0 if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf")
               else 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def pad(text: str, width: int, *, right: bool = False) -> str:
    """`text` padded with spaces to `width` terminal columns (text_width), on the left when `right`."""
    fill = " " * max(0, width - text_width(text))
    return fill + text if right else text + fill


def home_relative(path: str) -> str:
    """`path` with this user's home folder written '~' (a shell and `--db` read it back): what a notebook prints of
    its own environment, kept in the executed copy a reviewer shares, need not name the reviewer's home folder."""
    import os

    home = os.path.expanduser("~").rstrip("/")
    if not home or home == "~" or not os.path.isabs(home):  # no home known: the path as it is
        return path
    if path == home:
        return "~"
    return "~" + path[len(home):] if path.startswith(home + "/") else path


_BARE_ON_WINDOWS = re.compile(r"[\w@%+=:,./\\-]+", re.ASCII)


def command_word(text: str, *, windows: bool | None = None) -> str:
    """`text` as a word of a chorus-batch command line a message suggests, for this system's shells: shlex.quote on
    POSIX; on Windows (cmd.exe and PowerShell) a path of letters, digits, \\, :, ., -, / bare, else in double quotes
    (no Windows name holds one), or single quotes where PowerShell would expand a $ or ` within double quotes.
    shlex.quote put every Windows path in single quotes ('C:\\data\\m.sqlite'), which cmd.exe passes on as part of
    the path: the command copied from the message said the manifest or site was not there."""
    import os
    import shlex

    if not (os.name == "nt" if windows is None else windows):
        return shlex.quote(text)
    if _BARE_ON_WINDOWS.fullmatch(text):
        return text
    if '"' not in text and "$" not in text and "`" not in text:
        return f'"{text}"'
    return "'" + text.replace("'", "''") + "'"  # PowerShell's literal string ('' is one quote)


def closest(word: str, choices) -> str | None:
    """The choice `word` is most likely a misspelling of, or None. Among difflib's close matches, the one sharing
    the most letters: a swap (--stie) is nearer --site than --time, which difflib alone scores the same."""
    from collections import Counter
    from difflib import get_close_matches

    def shared(choice: str) -> int:
        return sum((Counter(word) & Counter(choice)).values())

    # Flags are compared without their dashes: the "--" both share made --site look close to --quiet
    bare = {choice.lstrip("-"): choice for choice in choices}
    word = word.lstrip("-")
    matches = get_close_matches(word, list(bare), n=5, cutoff=0.65)  # --out is not --account (0.6); rnu is run (0.67)
    return bare[max(matches, key=shared)] if matches else None


# The kinds of problem a run records (scan_errors' kind; --json and the manifest keep them as they are), in words a
# reader of `status` or a run's summary knows; the kind follows in brackets, as the README and scan_errors name it.
ERROR_KIND_WORDS = {
    "unparseable": "path fits no part of the site layout",
    "vanished": "gone before it could be read",
    "vanished_dir": "folder gone while it was listed",
    "unreadable": "file could not be read",
    "unreadable_dir": "folder could not be listed",
    "unreadable_link": "link could not be followed",
    "changed_while_hashing": "written to while it was read",
    "special_file": "not a regular file",
    "symlink": "link not followed",
    "symlink_inside": "link into the site itself, not followed",
    "symlink_loop": "loop of links",
    "symlink_duplicate": "files reached through two links",
    "broken_symlink": "link to nothing",
    "mount_loop": "mount of a folder inside itself",
    "mount_inside": "mount of a folder of the site",
    "mtime_out_of_range": "modification time out of range",
    "silent_change": "stored MD5 does not match the bytes",
    "duplicate_path": "same path under two roots",
    "unverifiable": "no MD5 to check it by",
    "delete_list": "delete-list line not applied",
}


def error_kind(kind: str) -> str:
    """A recorded problem's kind as text output shows it: in words, the kind's own name after them (an unknown kind:
    its name alone)."""
    words = ERROR_KIND_WORDS.get(kind)
    return f"{words} ({kind})" if words else kind


# A run's stages (the keys of --json's `stage_s`, which stay as they are: benchmarks read them), in words a site
# engineer knows, as `run -v` says what each took.
STAGE_WORDS = {
    "load_previous": "reading the previous version",
    "scan": "listing",
    "hash": "hashing",
    "cache_facts": "saving header facts",
    "commit": "commit",
    "validate": "checking against the procedures",
}


def stage_words(stage: str) -> str:
    """A run's stage as `run -v` names it (an unknown stage: its own name)."""
    return STAGE_WORDS.get(stage, stage)
