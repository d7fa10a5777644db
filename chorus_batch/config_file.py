"""chorus.toml as written, with the standard library only: where it is, its TOML, its paths made absolute.
config.py validates what it holds (pydantic)."""

from __future__ import annotations

import errno
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

# The modalities a site's settings name (chorus.toml's [patterns], upload --modalities), "Other" aside; here, not in
# config.py, so that the review API (and the review notebook's kernel) has them without pydantic's models (0.3 s CPU).
MODALITIES = ("OMOP", "Metadata", "Waveforms", "Images")

CONFIG_NAME = "chorus.toml"


def config_path(given: str | None) -> str | None:
    """The config file a command reads: --config, else ./chorus.toml if there is one, else none. A ./chorus.toml
    that is there but is no file (a folder, a link to a share that is not mounted) is returned, to be refused as
    it is read: skipped, a nightly run went on with the defaults (another manifest, another max_delete)."""
    return given or (CONFIG_NAME if os.path.lexists(CONFIG_NAME) else None)


# tomllib's words for a setting or a section given twice: the position it names is the second one
_TWICE = {"Cannot overwrite a value": "a setting is given twice (the second is at the position given)",
          "Cannot declare": "a section is declared twice (the second is at the position given)"}

# tomllib's words for a slip of a value in quotes -> (what it means, what to do): its own message ("Unescaped '\\' in
# a string") was followed by "fix the TOML syntax at the position given"
_QUOTED = {"Unescaped '\\' in a string": (
               "in double quotes a backslash starts an escape (\\n, \\t), as a Windows path's do",
               "write the value in single quotes, where a backslash is itself (root = 'D:\\chorus\\site'), or "
               "double each backslash")}  # (a value whose quote is not closed: _unclosed_quote)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's TOML as a dict (not validated); a missing, unreadable or malformed file is a ConfigError."""
    return read_toml_text(path)[0]


def read_toml_text(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """read_toml's dict, and the text it was read from (to name the line of a setting in a message: a pipe cannot
    be read twice)."""
    path = Path(path)
    _warn_if_anyone_may_write(path)
    text = ""
    try:
        text = _text(path)  # (read once: a pipe, --config <(envsubst < chorus.toml.in), is read to its end)
        return tomllib.loads(text), text
    except FileNotFoundError:
        if path.is_symlink():  # (the link is there, what it leads to is not)
            raise ConfigError(f"config file {path} is a symbolic link to {os.readlink(path)}, which is not there",
                              where=str(path), fix="mount or restore what it leads to (or correct the link), then "
                                                   "run again") from None
        raise ConfigError(f"config file not found: {path}", where=str(path),
                          fix="pass --config with an existing file, or omit it" + (
                              " (standard input is --config /dev/stdin)" if str(path) == "-" else "")) from None
    except IsADirectoryError:
        inside = path / CONFIG_NAME
        raise ConfigError(f"config file {path} is a folder, not a file", where=str(path),
                          fix=f"pass --config {inside}" if inside.is_file() else
                              "pass --config with the chorus.toml file itself" + (
                                  f" (or rename the folder ./{CONFIG_NAME}: a run reads that name when it is given "
                                  "no --config)" if str(path) == CONFIG_NAME else "")) from None
    except UnicodeDecodeError as exc:  # (said "in position 16": a byte count, of no use in an editor)
        said, where = not_utf8(path, exc)
        raise ConfigError(f"config file {said}", where=where,
                          fix="save the file as UTF-8 (the TOML standard) and run again") from None
    except OSError as exc:
        said, fix = why_unreadable(path, exc)
        raise ConfigError(f"cannot read config file {path}: {said}", where=str(path), fix=fix) from None
    except tomllib.TOMLDecodeError as exc:
        what, where, fix = explain_toml_error(text, exc, path)
        raise ConfigError(f"config file is not valid TOML: {what}", where=where, fix=fix) from None


def explain_toml_error(text: str, exc: tomllib.TOMLDecodeError, path: Path, *,
                       show_values: bool = True) -> tuple[str, str, str]:
    """(what, where, fix) of a TOML file `text` tomllib refused with `exc`: which setting or value, on which line.
    `show_values=False`: the fix never writes a line of the file back (a chorus-upload config holds secrets)."""
    twice = _setting_twice(text) if str(exc).startswith("Cannot overwrite a value") else None
    if twice is not None:  # (tomllib names neither the setting nor, at the file's end, its line)
        setting, first, second = twice
        return (f"the setting {setting!r} is given twice, on line {first} and on line {second}",
                f"{path}, line {second}", "keep one of the two and remove the other")
    said = next((what for words, what in _TWICE.items() if str(exc).startswith(words)), None)
    line = re.search(r"\(at line (\d+), column \d+\)", str(exc))
    declared = _section_twice(text, int(line.group(1))) if line and str(exc).startswith("Cannot declare") else None
    if declared is not None:  # ("Cannot declare ('run',) twice": not the first's line, and "keep one of the two" lost
        # the settings of the other)
        section, first = declared
        return (f"the section [{section}] is declared twice, on line {first} and on line {line.group(1)}",  # type: ignore[union-attr]
                f"{path}, line {line.group(1)}",  # type: ignore[union-attr]
                f"merge them: move the settings below the second [{section}] up to the first (line {first}), and "
                "remove the second header line")
    at = f"{path}, line {line.group(1)}" if line else str(path)
    if not said and re.search(r"\r(?!\n)", text):
        # (lines ended by CR alone, as classic Mac OS and some exporters write them: TOML reads the whole file as
        # line 1, and the error pointed at a column of it no editor shows as wrong)
        return (f"{exc}: its lines end in a carriage return alone (CR, without LF), which TOML does not read as the "
                "end of a line", at,
                f"save it with LF (or CRLF) line ends, e.g. tr '\\r' '\\n' < {path.name} > fixed.toml, and run again")
    unclosed = None if said else _unclosed_quote(text, str(exc), int(line.group(1)) if line else None)
    if unclosed is not None:  # ("Unterminated string (at end of document)": which value, and where, unsaid)
        number, quote, fix = unclosed
        return (f"the value on line {number} opens a quote ({quote}) that is not closed"
                + (" on its line" if line else ", so the rest of the file was read as part of it") + f" ({exc})",
                f"{path}, line {number}",
                fix if show_values else f"end the value with the same quote ({quote}), and run again")
    quoted = next((hint for words, hint in _QUOTED.items() if str(exc).startswith(words)), None)
    if quoted is not None:
        return f"{exc}: {quoted[0]}", at, quoted[1]
    unopened = None if said else _unclosed_value(text, str(exc))
    if unopened is not None:  # ("Unclosed array (at line 3, column 1)": the next setting's line, or none at all)
        number, what, fix = unopened
        return what + f" ({exc})", f"{path}, line {number}", fix
    unquoted = _unquoted_text(text, int(line.group(1))) if line and not said and show_values else None
    return (f"{exc}" + (f": {said}" if said else ""), at,
            "keep one of the two and remove the other" if said else
            f"a text value is written in quotes in TOML: {unquoted}" if unquoted else
            "fix the TOML syntax at the position given")


def setting_line(text: str, loc: tuple[str, ...]) -> int | None:
    """The line of a TOML text on which the setting `loc` (("run", "workers")) is written, or the [section] header
    `loc` names (("site", "roots"): [site.roots]); else that of the nearest enclosing one written (an item of a list:
    its setting's line; a setting given in an inline table: the table's line). None where nothing of it is written
    line by line. Valid TOML only (the text loaded): a key is read with tomllib itself, so quoted and dotted keys
    count as the file writes them."""
    table: tuple[str, ...] = ()
    written: dict[tuple[str, ...], int] = {}
    key_line = re.compile(r"\s*((?:[A-Za-z0-9_-]+|\"[^\"\n]*\"|'[^'\n]*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"\n]*\"|'[^'\n]*'))*)\s*=")
    in_string = False  # (a line within a multi-line string is no key: `"""` ... `"""`)
    for number, line in enumerate(text.splitlines(), 1):
        if in_string:
            in_string = (line.count('"""') + line.count("'''")) % 2 == 0
            continue
        header = re.match(r"\s*\[", line)  # (also [[run]], an array of tables: "should be a table", named on its line)
        found = None if header else key_line.match(line)
        if header or found:
            try:
                parsed = tomllib.loads(line if header else f"{found.group(1)} = 0")  # type: ignore[union-attr]
            except tomllib.TOMLDecodeError:
                parsed = None
            names: tuple[str, ...] = ()
            while isinstance(parsed, dict) and len(parsed) == 1:
                name, parsed = next(iter(parsed.items()))
                names = (*names, name)
                if isinstance(parsed, list) and len(parsed) == 1:  # [[name]]: the table of its one entry
                    parsed = parsed[0] if parsed[0] else None
            if header:
                table = names
                written.setdefault(table, number)
            elif names:
                for end in range(1, len(names) + 1):  # (`workers.x = 2` writes run.workers on its line too: an error
                    # in run.workers was said on [run]'s line)
                    written.setdefault((*table, *names[:end]), number)
                rest = line[found.end():]  # type: ignore[union-attr]
                in_string = (rest.count('"""') + rest.count("'''")) % 2 == 1
    for end in range(len(loc), 0, -1):
        if tuple(loc[:end]) in written:
            return written[tuple(loc[:end])]
    return None


def _unclosed_quote(text: str, error: str, number: int | None) -> tuple[int, str, str] | None:
    """(line, quote, fix) where tomllib's `error` is that of a text value whose quote is not closed: `root = "/data/x`
    is "Illegal character '\\n'" on its line (`number`; `root = '/data/x` "Found invalid character '\\n'"); a quote
    never closed before the end of the file is "Unterminated string" or "Expected \"'\"" (at end of document), on the
    line after the longest start of the file that reads. Else None."""
    lines = text.splitlines()
    if number is not None:
        opened = {"Illegal character '\\n'": '"', "Found invalid character '\\n'": "'"}
        quote = next((q for words, q in opened.items() if error.startswith(words)), None)
        if quote is None or not 0 < number <= len(lines) or quote not in lines[number - 1]:
            return None
    else:
        expected = re.match(r"Expected \"('''|')\" \(at end of document\)", error)
        if not (expected or error.startswith("Unterminated string (at end of document)")):
            return None
        number = next((m + 1 for m in range(len(lines), -1, -1) if _reads("\n".join(lines[:m]))), 0)
        if not 0 < number <= len(lines):
            return None
        quote = expected.group(1) if expected else '"""' if '"""' in lines[number - 1] else '"'
    written = lines[number - 1].strip()
    # (the line as it should be, where the value is the line's last thing: no comment, list or table on it)
    simple = re.fullmatch(r"[A-Za-z0-9_.-]+\s*=\s*" + re.escape(quote) + r"[^\"'#\[{]*", written)
    return number, quote, (f"end the value with the same quote ({quote})" + (f": {written}{quote}" if simple else "")
                           + ", and run again")


# tomllib's words for a list or an inline table left open -> (what it is, how it is written)
_OPEN = {"Unclosed array": ("list", "a ',' between each two items and a ']' after the last"),
         "Unclosed inline table": ("inline table", "a ',' between each two settings and a '}' after the last, on "
                                                   "the same line (TOML keeps an inline table on one line)")}


def _unclosed_value(text: str, error: str) -> tuple[int, str, str] | None:
    """(line, what, fix) where tomllib's `error` is that of a list or inline table not closed (`exclude = ["a", "b"`
    followed by `workers = 2` is "Unclosed array" at the start of workers' line; `["a" "b"]`, a comma missing, at the
    second item), or of a file that ends within a setting ("Invalid value (at end of document)", no line at all): the
    line it begins on, the first after the longest start of the file that reads. Else None."""
    kind = next((found for words, found in _OPEN.items() if error.startswith(words)), None)
    if kind is None and not error.endswith("(at end of document)"):
        return None
    lines = text.splitlines()
    number = next((m + 1 for m in range(len(lines), -1, -1) if _reads("\n".join(lines[:m]))), 0)
    if not 0 < number <= len(lines):
        return None
    key = re.match(r"\s*([A-Za-z0-9_.-]+)\s*=\s*(\S?)", lines[number - 1])
    named = f" ({key.group(1)} = ...)" if key else ""
    if kind is None and key and key.group(2) and key.group(2) in "[{":  # (`exclude = ["a",` and the file ends:
        kind = _OPEN["Unclosed array" if key.group(2) == "[" else "Unclosed inline table"]  # "Invalid value")
    if kind is not None:
        return (number, f"the {kind[0]} that opens on line {number}{named} is not closed",
                f"write {kind[1]}, and run again")
    return (number, f"the file ends before what line {number} begins{named} is complete",
            "complete it (a setting is name = value, a section [name]) or remove it, and run again")


def _reads(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


def _unquoted_text(text: str, number: int) -> str | None:
    """The line `number` quoted, where it gives a setting a value TOML does not read but would read in quotes
    (max_delete = 50%, verify_max_bytes = 10GiB, root = /data/site: the README writes them so, in quotes); else None."""
    lines = text.splitlines()
    found = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\s*=\s*([^\s\"'\[{#][^#]*?)\s*(#.*)?", lines[number - 1]) \
        if 0 < number <= len(lines) else None
    if found is None or '"' in found.group(2):
        return None
    try:
        tomllib.loads(f"v = {found.group(2)}")
        return None  # (a value TOML reads: the error is elsewhere on the line)
    except tomllib.TOMLDecodeError:
        return f'{found.group(1)} = "{found.group(2)}"'


def why_unreadable(path: Path, exc: OSError, option: str = "--config") -> tuple[str, str]:
    """Why a config file could not be read, and what to do, by the OS's error: every one was told to "check the file's
    permissions", also a loop of symbolic links, a path under a file or a name too long, which no permission mends."""
    import shlex

    shown = shlex.quote(str(path))
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"this user may not read it ({exc.strerror})",
                f"make it readable by this user (ls -l {shown}; chmod u+r), or give {option} a file it may read")
    if exc.errno == errno.ELOOP:
        return ("it is a loop of symbolic links (each leads back to another)",
                f"correct the link (`ls -l {shown}` shows where it leads), or give {option} the file's own path")
    if exc.errno == errno.ENOTDIR:
        return ("a part of its path is a file, not a folder", f"give {option} the path of the file itself")
    if exc.errno == errno.ENAMETOOLONG:
        return ("its path (or a name in it) is longer than this system allows",
                f"give {option} the file's path as it is on disk")
    return (exc.strerror or str(exc), "check the disk or share the file is on (an I/O error, a share that dropped), "
                                      "then run again")


def _header_names(line: str) -> tuple[str, ...] | None:
    """The table a [section] header line names (`[site.roots]`: ("site", "roots")), read with tomllib; else None."""
    if not line.lstrip().startswith("[") or line.lstrip().startswith("[["):
        return None
    try:
        header = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    names: tuple[str, ...] = ()
    while isinstance(header, dict) and len(header) == 1:
        name, header = next(iter(header.items()))
        names = (*names, name)
    return names or None


def _section_twice(text: str, second: int) -> tuple[str, int] | None:
    """(the section, the line of its first header, or of the dotted key that made it) where tomllib refused the header
    on line `second` as a table declared twice; else None."""
    lines = text.splitlines()
    if not 0 < second <= len(lines):
        return None
    names = _header_names(lines[second - 1])
    if names is None:
        return None
    # (its header, or a dotted key above that made it: `roots.OMOP = ...` under [site] is [site.roots])
    first = setting_line("\n".join(lines[:second - 1]), names)
    return None if first is None else (".".join(names), first)


def _setting_twice(text: str) -> tuple[str, int, int] | None:
    """The setting a TOML text gives twice, as (dotted name, line of the first, line of the second), found with tomllib
    itself: the second is on the first line whose prefix tomllib refuses so, the first on the first line whose prefix
    holds that setting. None where it cannot be told (the error lies elsewhere, or within a multi-line value)."""
    lines = text.splitlines(keepends=True)

    def parsed(upto: int) -> dict[str, Any] | None:
        try:
            return tomllib.loads("".join(lines[:upto]))
        except tomllib.TOMLDecodeError:
            return None

    second = next((n for n in range(1, len(lines) + 1) if parsed(n) is None and _overwrites("".join(lines[:n]))), None)
    if second is None:
        return None
    table: tuple[str, ...] = ()
    for line in lines[:second - 1]:  # the [section] the second one is in: the last header above it
        if line.lstrip().startswith("[") and not line.lstrip().startswith("[["):
            try:
                header = tomllib.loads(line)
            except tomllib.TOMLDecodeError:
                continue
            table = ()
            while isinstance(header, dict) and len(header) == 1:
                name, header = next(iter(header.items()))
                table = (*table, name)
    try:
        key = tomllib.loads(lines[second - 1])
    except tomllib.TOMLDecodeError:
        return None
    path = table
    while isinstance(key, dict) and len(key) == 1:
        name, key = next(iter(key.items()))
        path = (*path, name)

    def holds(data: dict[str, Any] | None) -> bool:
        for part in path:
            if not isinstance(data, dict) or part not in data:
                return False
            data = data[part]
        return True

    last = next((n for n in range(1, second) if holds(parsed(n))), None)  # (a value over lines: its last one)
    if last is None or not path:
        return None
    first = next((n for n in range(last, 0, -1) if _parses("".join(lines[n - 1:last]))), last)
    return ".".join(path), first, second


def _parses(text: str) -> bool:
    try:
        return bool(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return False


def _overwrites(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return str(exc).startswith("Cannot overwrite a value")
    return False


def _text(path: Path) -> str:
    """The file's text: UTF-8, with or without a byte-order mark (Notepad writes one: it was "Invalid statement (at
    line 1, column 1)"), or UTF-16 with one, as Windows PowerShell 5's `>` and Notepad's "Unicode" save it (`chorus-batch
    import-config config.toml > chorus.toml` there: it was "byte 0xff on line 1 (a Latin-1 or Windows-1252 letter)",
    and "save as UTF-8" of a file its editor showed as plain text). UTF-16 without a byte-order mark (NUL in every
    other byte of its first characters) is said as such, not read as TOML ("Invalid statement") nor as one letter."""
    return decode_toml(read_bytes(path), path)


# How long a named pipe (mkfifo) given as a config file may go without a writer before it is refused: a writer
# started with the command (`envsubst < in > fifo & chorus-batch run --config fifo`) opens it within milliseconds.
PIPE_WRITER_WAIT_S = 1.0


def read_bytes(path: Path, what: str = "config file") -> bytes:
    """The bytes of a config file (chorus.toml, or chorus-upload's config.toml): a regular file, or a pipe with a
    writer (`--config <(envsubst < chorus.toml.in)`), read to its end. A named pipe nothing writes to (a mkfifo left
    behind, a writer that failed to start) is a ConfigError after PIPE_WRITER_WAIT_S: opening it waited for a writer
    forever (a nightly run that never ended, nor said why). A device (/dev/zero, /dev/tty: read without end, or
    waiting on a terminal cron has not) or a socket is a ConfigError at once; /dev/null is an empty file. A folder is
    an IsADirectoryError, a missing file a FileNotFoundError, as a plain read says them."""
    import select
    import stat
    import time

    info = os.stat(path)  # (FileNotFoundError, PermissionError: as read_bytes said them)
    kind = info.st_mode
    if stat.S_ISDIR(kind):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    null = stat.S_ISCHR(kind) and os.path.samestat(info, os.stat(os.devnull))
    if not (stat.S_ISREG(kind) or stat.S_ISFIFO(kind) or null):
        kind_of = "a socket" if stat.S_ISSOCK(kind) else "a device"
        raise ConfigError(f"{what} {path} is {kind_of}, not a file", where=str(path),
                          fix=f"pass the path of the {what} itself" + (
                              " (or a pipe: <(envsubst < chorus.toml.in))" if what == "config file" else ""))
    # Windows: os.stat says S_IFIFO of a named pipe (\\.\pipe\NAME), but O_NONBLOCK is Unix only, and select()
    # takes only sockets there (Python docs: os "open flag constants", select.select): read as a file is.
    if not stat.S_ISFIFO(kind) or not hasattr(os, "O_NONBLOCK"):
        return path.read_bytes()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # (opened at once, writer or not)
    try:
        chunks: list[bytes] = []
        writer, waited_from = False, time.monotonic()
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:  # empty but a writer holds it open: wait for what it writes
                writer = True
                os.set_blocking(fd, True)
                continue
            if chunk:
                chunks.append(chunk)
            elif chunks or writer:  # the end of what was written
                return b"".join(chunks)
            elif time.monotonic() - waited_from >= PIPE_WRITER_WAIT_S:
                raise ConfigError(f"{what} {path} is a named pipe that nothing writes to (no writer opened it "
                                  f"within {PIPE_WRITER_WAIT_S:g} s); nothing was done", where=str(path),
                                  fix="start its writer first (envsubst < chorus.toml.in > PIPE &), pass "
                                      "--config <(envsubst < chorus.toml.in), or pass the TOML file itself"
                                      if what == "config file" else f"start its writer first, or pass the {what} "
                                                                    "itself (or a pipe: <(command))")
            else:  # no writer yet: wait a little for one (it wakes this as it writes)
                select.select([fd], [], [], 0.05)
    finally:
        os.close(fd)


def decode_toml(raw: bytes, path: Path) -> str:
    """The text of a TOML file's bytes `raw` as _text reads it (also chorus-upload's config.toml, which sites on Windows
    save alike); a UnicodeDecodeError for bytes that are not UTF-8."""
    fix = "save the file as UTF-8 (the TOML standard; in PowerShell: Out-File -Encoding utf8) and run again"
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is UTF-16 text cut short (it ends within a character)",
                              where=str(path), fix=fix) from None
    head = raw[:64][: len(raw[:64]) // 2 * 2]
    if len(head) >= 4 and ((0 not in head[0::2] and head[1::2].count(0) == len(head) // 2)
                           or (0 not in head[1::2] and head[0::2].count(0) == len(head) // 2)):
        raise ConfigError(f"config file {path} is UTF-16 text without a byte-order mark, not UTF-8", where=str(path),
                          fix=fix)
    return raw.decode("utf-8-sig")


def not_utf8(path: Path, exc: UnicodeDecodeError) -> tuple[str, str]:
    """A TOML file that is not UTF-8, as an editor shows it: (what it is, where), the byte and its line."""
    line = exc.object[:exc.start].count(b"\n") + 1
    return (f"{path} is not UTF-8: byte 0x{exc.object[exc.start]:02x} on line {line} (a Latin-1 or Windows-1252 "
            "letter, such as one with an accent)", f"{path}, line {line}")


def _warn_if_anyone_may_write(path: Path) -> None:
    """A config every user may change (written under umask 000, chmod 666) says where a run reads and writes, as
    whoever runs it (root under cron): warned of, never refused (a group's shared config is left alone). Not on
    Windows (no os.getuid): there a file's mode says only whether it is read-only, every writable file reads as
    rw-rw-rw-, and its ACL says who may change it (every run warned, with a chmod Windows does not have)."""
    import stat

    if not hasattr(os, "getuid"):
        return
    try:
        mode = path.stat().st_mode
    except OSError:  # (said as the file is read)
        return
    if stat.S_ISREG(mode) and mode & stat.S_IWOTH:
        import logging

        logging.getLogger("chorus_batch").warning(
            f"the config file {path} may be changed by every user of this machine (mode {stat.filemode(mode)}): they "
            f"choose what this run reads and writes; make it yours alone to write: chmod o-w {path}")


def resolve_path(base: Path, value: str | None, what: str) -> str | None:
    """A path setting (`what`) as the run uses it: a URL as it is, a local path absolute (relative ones from
    `base`, the config file's folder)."""
    from .urls import expand_home

    if value is not None and "\0" in value:
        # (TOML writes one as "\u0000": no file system takes it in a path; it was "internal error: ValueError:
        # embedded null byte", exit 3, in every command that read the file)
        raise ConfigError(f"{what} {value!r} holds a NUL character (\\u0000), which no path can hold", where=what,
                          fix="write the path without it")
    if value is None or "://" in value:
        return value
    path = Path(expand_home(value, what))
    relative = not path.is_absolute()
    path = (base / path) if relative else path
    _no_variable(value, path, what)
    if relative and not os.path.lexists(path) and os.path.lexists(value) and base != Path.cwd():
        # (written relative to where the command is run, as on the command line: "site root is not a readable
        # directory: /etc/chorus/site does not exist (a typo, or a disk that is not mounted?)" of a folder that is
        # there, or a new, empty manifest made beside the config file while the site's own lay in the current folder)
        import logging

        logging.getLogger("chorus_batch").warning(
            f"{what} {value!r} is relative to the config file's folder, {base}: it is {path}, which is not there; "
            f"{os.path.abspath(value)} (from the current folder) is there: write that full path if it is the one meant")
    return str(path)


def _no_variable(value: str, path: Path, what: str) -> None:
    """A path setting that names an environment variable (`root = "$DATA/site"`) is refused: chorus.toml expands
    none, and it was "site root is not a readable directory: /etc/chorus/$DATA/site", a manifest made in a new folder
    named `$DATA`. A folder that is there under that very name is taken as written (urls.unexpanded_variable)."""
    from .urls import unexpanded_variable

    variable = unexpanded_variable(value, str(path))
    if variable is None:
        return
    raise ConfigError(f"{what} {value!r} names the environment variable {variable}, but chorus.toml expands no "
                      "environment variables (only a leading ~, the home folder)", where=what,
                      fix="write the path out, or fill the variables in before the run: envsubst < chorus.toml.in > "
                          "chorus.toml (or --config <(envsubst < chorus.toml.in)); relative paths are from the file's "
                          "folder")


def check_working_folder() -> None:
    """The current folder is there: one removed after the shell (a cron line's `cd`) entered it made every relative
    path an internal error ("FileNotFoundError: [Errno 2]"), and ./chorus.toml was not found and so not read."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise ConfigError("the current folder no longer exists (it was removed or replaced after this shell entered "
                          f"it): neither relative paths nor ./{CONFIG_NAME} can be found from it; nothing was done",
                          where="the current folder ($PWD: " + os.environ.get("PWD", "unknown") + ")",
                          fix="cd to a folder that exists (in a cron line: cd /path/to/folder && chorus-batch ...), "
                              "then run again") from None


# The environment variables README documents that take a number: (kind, least value, what it sets). Checked when
# a command starts, so a typo is exit 2 at once, not a default taken silently (the readers fall back to theirs)
# nor a ValueError in the middle of a merge or an upload.
NUMERIC_ENVIRONMENT = {
    "CHORUS_BATCH_PROGRESS_S": (float, 0, "5", "seconds between progress lines in a log"),
    "CHORUS_BATCH_CHECKPOINT_S": (float, 0, "5", "seconds of hashing between two checkpoints"),
    "CHORUS_BATCH_RETRY_BASE_S": (float, 0, "0.5", "seconds before the first retry of a cloud call"),
    "CHORUS_BATCH_RETRY_DEADLINE_S": (float, 0, "30", "seconds a cloud call is retried"),
    "CHORUS_BATCH_READ_TIMEOUT_S": (float, 0.1, "10", "seconds a cloud request waits for the service's answer"),
    "CHORUS_BATCH_LEASE_S": (float, 0, "60", "seconds of a manifest's blob lease, held to 15-60"),
    "CHORUS_BATCH_PARTITION_ROWS": (int, 1, "500000", "rows per partition of a merge"),
    "CHORUS_BATCH_LEDGER_ROWS": (int, 1, "256", "uploads ledger rows written at once"),
    "CHORUS_BATCH_BUSY_WAIT_S": (float, 0, "900", "seconds a ledger write waits for a run's commit"),
}


# Libraries' variables a site sets for a batch job, checked as those above: polars panics at its first query on
# POLARS_MAX_THREADS=0 (a script's `$((SLURM_CPUS_PER_TASK - 1))` on one CPU), a run then ended in a Rust backtrace
# with exit code 1 ("findings") and its `runs` row unfinished; one it cannot read it ignores with a warning.
LIBRARY_ENVIRONMENT = {
    "POLARS_MAX_THREADS": (int, 1, "4", "threads of polars, the data-frame library; unset: the CPUs this process may "
                                        "use"),
}

# Every CHORUS_BATCH_* variable some part of chorus-batch reads (the numeric ones above, and these).
OTHER_ENVIRONMENT = ("CHORUS_BATCH_CACHE_DIR", "CHORUS_BATCH_TEST_PAUSE", "CHORUS_BATCH_TEST_RESUME",
                     "CHORUS_BATCH_SLURM_LOCKED")
# Of those, the ones chorus-batch sets for itself (a test's pause and its end; `run --slurm` telling the Slurm script it
# holds the manifest's submission lock): never warned of, and not offered to the user in the list of those it reads.
INTERNAL_ENVIRONMENT = ("CHORUS_BATCH_TEST_PAUSE", "CHORUS_BATCH_TEST_RESUME", "CHORUS_BATCH_SLURM_LOCKED")


CACHE_DIR_VARIABLE = "CHORUS_BATCH_CACHE_DIR"


def check_cache_dir(value: str) -> None:
    """CHORUS_BATCH_CACHE_DIR is a full path (or ~/...): a relative one put the cache, and the working copy of a
    manifest in Azure, under whichever folder a command was started in (a cron job's home, a Slurm job's folder)."""
    if not value.startswith("~") and not os.path.isabs(value):
        raise ConfigError(f"environment variable {CACHE_DIR_VARIABLE}={value!r} is a relative path: the cache would be "
                         "under whichever folder a command is started in", where=CACHE_DIR_VARIABLE,
                         fix=f"set {CACHE_DIR_VARIABLE} to a folder of this user's (a full path), or unset it for the "
                             "default (~/.cache/chorus-batch)")


def check_environment(environ: dict[str, str] | None = None) -> None:
    """A documented numeric CHORUS_BATCH_* variable that is set (not empty) must hold a finite number of its kind,
    at least its least value; else a ConfigError naming the variable. A CHORUS_BATCH_* variable chorus-batch does not
    read (a typo: CHORUS_BATCH_PROGRES_S=60 left the default of 5 s in force, silently) is warned of."""
    import math

    environ = os.environ if environ is None else environ
    known = [*NUMERIC_ENVIRONMENT, *OTHER_ENVIRONMENT]
    for name in sorted(n for n in environ if n.upper().startswith("CHORUS_BATCH_") and n not in known):
        import logging
        from difflib import get_close_matches  # (only for a variable not known: not on every start-up)

        prefix = len("CHORUS_BATCH_")  # (compared after it: every name shares it)
        offered = [k for k in known if k not in INTERNAL_ENVIRONMENT]
        meant = ["CHORUS_BATCH_" + m for m in get_close_matches(name.upper()[prefix:], [k[prefix:] for k in offered], n=1)]
        logging.getLogger("chorus_batch").warning(
            f"environment variable {name} is not one chorus-batch reads; it is ignored "
            + (f"(did you mean {meant[0]}?)" if meant else f"(those it reads: {', '.join(sorted(offered))})"))
    if environ.get("CHORUS_BATCH_CACHE_DIR"):  # (as a number's typo: said at start, not by the first remote manifest)
        check_cache_dir(environ["CHORUS_BATCH_CACHE_DIR"])
    for name, (kind, least, example, what) in (NUMERIC_ENVIRONMENT | LIBRARY_ENVIRONMENT).items():
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
            ok = math.isfinite(value) and value >= least
        except ValueError:
            ok = False
        if name in LIBRARY_ENVIRONMENT and not re.fullmatch(r"\+?[0-9]+", raw):
            # (read by the library's own parser, Rust's: Python's int() also takes "1_0" and other scripts' digits,
            # which polars ignored with a UserWarning, running on every CPU)
            ok = False
        if not ok:
            kind_name = "a whole number" if kind is int else "a number"
            raise ConfigError(f"environment variable {name}={raw!r} is not {kind_name} of at least {least} ({what})",
                              where=name, fix=f"set {name} to {kind_name} such as {example}, or unset it for the default")
