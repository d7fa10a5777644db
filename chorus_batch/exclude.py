"""Exclusions: files of the listing that are neither hashed nor recorded, but counted.

A pattern is a shell glob (fnmatch semantics: `*` any run of characters, `?` one character, `[abc]`,
`[!abc]`, `[a-z]`). As in .gitignore, a pattern excludes a file when it matches the file or any folder above
it: a pattern without '/' is matched against each NAME of the path (the file's and its folders'), so `*.tmp`
excludes `a/b/c.tmp` and `OMOP` excludes `OMOP/person.csv` and `1001/OMOP/x.csv` (a user naming a folder
means the files in it: matching the file name only silently excluded nothing); a pattern with '/' is matched
against the whole site-relative path (a leading '/' or './' is ignored) or a folder path above the file, where
`*` also crosses folders, so `scratch/*` and `/scratch` exclude everything under the top-level `scratch/` (not
`1001/scratch/`); as in .gitignore, a `**/` at its start or between two '/' is any run of folders, none too
(`**/scratch` is a folder scratch/ at any depth, `a/**/b` also `a/b`). A trailing '/' (`OMOP/`) matches folders only. User patterns are case-sensitive. The DEFAULT
list (OS junk) is always applied, matched case-insensitively (Windows and macOS file systems are), unless
`--no-default-excludes` / `default_excludes = false`.

Patterns are turned into Rust regexes and matched over the whole listing frame at once (one regex pass
per pattern), never per row in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

# Files operating systems and office suites leave in shared folders: never data.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".DS_Store",  # macOS Finder
    "Thumbs.db",  # Windows Explorer thumbnails
    "desktop.ini",  # Windows folder settings
    "._*",  # AppleDouble (macOS resource forks on non-HFS volumes)
    "~$*",  # Microsoft Office lock files
    ".~lock.*#",  # LibreOffice lock files
    "Icon\r",  # macOS custom folder icons
    # Windows' "mark of the web" (an alternate data stream of a downloaded file), which a copy from Windows into WSL
    # or a Linux share makes a file of its own beside each file: person.csv:Zone.Identifier was recorded, uploaded,
    # and validation told the site to rename it
    "*:Zone.Identifier",
    # what an NFS client (Linux's name for it: .nfs and 24 hex digits) or a FUSE mount (sshfs, s3fs) leaves in a folder
    # while a file deleted there is still open somewhere: the deleted file itself, gone when the last reader closes it.
    # It was recorded as a file of the site (uploaded, then removed by the next run) or, gone before it was read,
    # failed the run as vanished
    ".nfs" + "[0-9a-f]" * 24, ".fuse_hidden" + "[0-9a-f]" * 16,
    # what text editors leave beside a file being edited: Vim's swap files (.name.swp, then .swo, ... .swa), Emacs'
    # lock (.#name) and auto-save (#name#) files, and the backup copy most editors keep (name~). They were recorded,
    # hashed and uploaded as files of the site, and validation told the site to rename them as misplaced data
    ".*.sw[a-p]", ".#*", "#*#", "*~",
    # the folders macOS and Windows keep at a volume's root: a site at the root of a disk it was copied to or shipped on
    ".Spotlight-V100/", ".Trashes/", ".fseventsd/", ".TemporaryItems/", "$RECYCLE.BIN/", "System Volume Information/",
)
EXAMPLES_PER_PATTERN = 5
_META = set("\\.+*?()|[]{}^$#&-~")  # escaped with a backslash: valid in both Rust's and Python's regex


def _escape(ch: str) -> str:
    return "\\" + ch if ch in _META else ch


def _from_root(pattern: str) -> str:
    """A path pattern as a site-relative path: without its leading '/' and './' (how one names the site root)."""
    while pattern.startswith(("/", "./")):
        pattern = pattern[1:] if pattern.startswith("/") else pattern[2:]
    return pattern


def glob_problem(pattern: object) -> str | None:
    """Why `pattern` is not a usable exclusion glob (None: it is)."""
    if not isinstance(pattern, str):
        return f"{pattern!r} is not a text glob"
    if not pattern.strip():
        return "an empty pattern matches nothing (or, by mistake, everything)"
    from .urls import storable

    if storable(pattern) != pattern:  # (bytes of a Latin-1 shell, decoded with surrogates: '\udce9' in messages and --json)
        return ("it is not valid UTF-8 text (shown as \\x.. escapes): a name that is not UTF-8 is never "
                "listed as a file (it is recorded as non_utf8_name), so it would match nothing; write the glob in UTF-8")
    if pattern != pattern.strip():
        return f"{pattern!r} has leading or trailing spaces"
    if _from_root(pattern).strip("/*") == "":
        return f"{pattern!r} would exclude every file of the site"
    if "/" in pattern and {".", ".."} & set(_from_root(pattern).split("/")):
        # (a site-relative path has no such folder: the pattern would never match, silently)
        return f"{pattern!r} names a '.' or '..' folder, which no site-relative path has: it would match nothing"
    if "\\" in pattern:  # (Windows' separator; as a name's character it is one Windows forbids)
        # (a run of them, a UNC-like `\\` or a doubled escape, is one separator: it was "write OMOP//*.csv", a glob
        # with an empty folder name that matches nothing)
        import re

        meant = re.sub(r"[/\\]+", "/", pattern)
        return f"it holds a backslash: folders are separated by '/' on every system (write {meant})"
    if "\x00" in pattern or "\n" in pattern:
        return f"{pattern!r} holds a control character"
    from .urls import scrub

    if scrub(pattern) != pattern:  # (a SAS URL pasted into the wrong option: its glob was quoted back whole in the
        # summary's "matched no file" warning, and listed in --json's excluded.unmatched)
        return (f"{scrub(pattern)!r} holds a URL or what looks like a secret (a SAS token, a key, a password): an "
                "exclusion glob is a file or folder name pattern (secrets go in the environment: rotate one given "
                "here)")
    return None


def glob_to_regex(pattern: str, *, ignore_case: bool = False) -> str:
    """The Rust regex (also valid in Python) matching the site-relative paths that `pattern` excludes."""
    folder_only = pattern.endswith("/")  # 'OMOP/': folders named so, never a file
    pattern = pattern.rstrip("/")
    by_name = "/" not in pattern
    body = pattern if by_name else _from_root(pattern)
    star, one = ("[^/]*", "[^/]") if by_name else (".*", ".")
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch == "*":
            run = i
            while i + 1 < n and body[i + 1] == "*":
                i += 1
            # '**/' at the start or after a '/' is any run of folders, none too (as .gitignore: `**/scratch` is a
            # scratch/ anywhere, `a/**/b` also a/b); as one '*' it asked for a folder above, and left the top one in
            if not by_name and i > run and (run == 0 or body[run - 1] == "/") and i + 1 < n and body[i + 1] == "/":
                out.append("(?:.*/)?")
                i += 2
                continue
            out.append(star)
        elif ch == "?":
            out.append(one)
        elif ch == "[":
            j = i + 1
            if j < n and body[j] == "!":
                j += 1
            if j < n and body[j] == "]":
                j += 1
            while j < n and body[j] != "]":
                j += 1
            if j >= n:  # no closing ']': a literal '[' (as fnmatch)
                out.append(_escape(ch))
            else:
                inner = body[i + 1:j]
                negate = inner.startswith("!")
                if negate:
                    inner = inner[1:]
                parts: list[str] = []
                k = 0
                while k < len(inner):
                    if k + 2 < len(inner) and inner[k + 1] == "-":
                        if inner[k] <= inner[k + 2]:
                            parts.append(f"{_escape(inner[k])}-{_escape(inner[k + 2])}")
                        k += 3
                    else:
                        parts.append(_escape(inner[k]))
                        k += 1
                if negate:
                    out.append("[^" + "".join(parts) + ("/" if by_name else "") + "]")
                elif parts:
                    out.append("[" + "".join(parts) + "]")
                else:  # an empty range such as [z-a] matches nothing
                    out.append("[^\\s\\S]")
                i = j
        else:
            out.append(_escape(ch))
        i += 1
    # the file itself or any folder above it ('/' follows a folder's name)
    regex = ("(?:^|/)" if by_name else "^") + "".join(out) + ("/" if folder_only else "(?:/|$)")
    return ("(?i)" if ignore_case else "") + "(?s)" + regex


@dataclass(frozen=True)
class Excludes:
    """The patterns a scan applies: the default OS-junk list (unless turned off) and the user's."""

    user: tuple[str, ...] = ()
    defaults: bool = True

    @property
    def patterns(self) -> list[tuple[str, str]]:
        """(source, pattern) in the order a file is attributed: the default list first."""
        default = [("default", p) for p in DEFAULT_EXCLUDES] if self.defaults else []
        return default + [("user", p) for p in dict.fromkeys(self.user)]


NO_EXCLUDES = Excludes(defaults=False)


def empty_counts() -> dict:
    return {"total": 0, "default": 0, "user": 0, "by_pattern": {}, "examples": {}}


def apply(listing: pl.DataFrame, excludes: Excludes) -> tuple[pl.DataFrame, dict]:
    """The listing without the excluded files, and what was excluded: {total, default, user, by_pattern:
    {pattern: n}, examples: {pattern: [paths]}}. A file matched by several patterns counts once, for the
    first (the default list comes first)."""
    patterns = excludes.patterns
    counts = empty_counts()
    if not patterns or listing.height == 0:
        return listing, counts
    # Every path against one regex (any glob), each glob only against the few paths that matched: a glob at a time
    # over every path was ~20 regex passes, half the main thread's work in a 100k-file no-change scan
    excluded = matched_by(pl.col("srcfile"), patterns)
    if not listing.select(excluded.any()).item():
        return listing, counts
    which = pl.coalesce([
        pl.when(pl.col("srcfile").str.contains(glob_to_regex(p, ignore_case=source == "default"))).then(pl.lit(i))
        for i, (source, p) in enumerate(patterns)
    ])
    marked = listing.with_columns(_excluded=excluded.fill_null(False))
    hits = marked.filter(pl.col("_excluded")).select("srcfile", _excluded_by=which)
    for i, n in hits.group_by("_excluded_by").len().sort("_excluded_by").iter_rows():
        source, pattern = patterns[i]
        counts["by_pattern"][pattern] = n
        counts[source] += n
        counts["total"] += n
    # A user glob every file of which an earlier glob took (.DS_Store, also in the default list) did match: kept
    # apart so that it is not said to match nothing (looked for among the excluded files only: few)
    counts["shadowed"] = [p for source, p in patterns if source == "user" and p not in counts["by_pattern"]
                          and hits["srcfile"].str.contains(glob_to_regex(p)).any()]
    sample = hits.sort("srcfile").group_by("_excluded_by", maintain_order=True).head(EXAMPLES_PER_PATTERN)
    for i, paths in sample.group_by("_excluded_by").agg("srcfile").sort("_excluded_by").iter_rows():
        counts["examples"][patterns[i][1]] = paths
    return marked.filter(~pl.col("_excluded")).drop("_excluded"), counts


def _matches(srcfile: pl.Expr, excludes: Excludes) -> pl.Expr:
    return matched_by(srcfile, excludes.patterns)


def matched_by(srcfile: pl.Expr, patterns: list[tuple[str, str]]) -> pl.Expr:
    """Whether a path is left out by any of `patterns` ((source, pattern) pairs, as Excludes.patterns)."""
    if not patterns:
        return pl.lit(False)
    # One alternation, one pass over each path; each glob's flags ((?i) of the default list) stay inside its group
    return srcfile.str.contains("|".join(f"(?:{glob_to_regex(p, ignore_case=source == 'default')})"
                                         for source, p in patterns))


def note_removed(counts: dict, removed: pl.Series) -> None:
    """Adds to a run's exclusion counts the files of the previous version it removes that the globs now leave out
    (`removed`: their paths): {removed, removed_examples}. The summary said only "neither hashed nor recorded" of
    them, beside a `removed` count it never tied to the globs: a glob added between runs (`OMOP/`) took recorded
    files out of the version with no word that it had."""
    if removed.len():
        counts["removed"] = removed.len()
        counts["removed_examples"] = removed.sort().head(EXAMPLES_PER_PATTERN).to_list()


def drop_excluded_errors(errors: pl.DataFrame, excludes: Excludes) -> pl.DataFrame:
    """The listing's problems without those of excluded files and folders. A folder's problem names it with
    a trailing '/' ("scratch/"), which a glob matching the folder matches: its files are excluded, so one it
    could not list is no problem of the site, and keeps no rows (they are removed as excluded, not kept as unseen)."""
    if not excludes.patterns or errors.height == 0:
        return errors
    return errors.filter(~_matches(pl.col("srcfile"), excludes).fill_null(False))


def same_globs(these: list | None, those: list | None) -> bool:
    """Whether two scans' exclusion globs ((source, pattern) pairs, as ScanResult.exclude_patterns; None: not
    recorded) leave out the same files: the same globs in any order (a file is left out when any matches; the order
    only says which glob counts it), each as the paths it matches (`/scratch` and `./scratch` are one). Shards listed with
    `--exclude '*.csv' --exclude '*.hea'` were refused by a merge given `--exclude '*.hea' --exclude '*.csv'` as listed
    with "other exclusion globs", their files "left out unlike"."""
    if these is None or those is None:
        return these is None and those is None

    # Compared as what they match: `/scratch` and `./scratch` (or `*.tmp` and `**.tmp`) leave out the same files
    def meant(pairs: list) -> set:
        return {(source, glob_to_regex(pattern, ignore_case=source == "default")) for source, pattern in pairs}

    return meant(these) == meant(those)


def merge_counts(parts: list[dict]) -> dict:
    """The exclusion counts of several shards as one (a glob is unmatched when it matched nothing in any)."""
    total = empty_counts()
    unmatched = [set(part["unmatched"]) for part in parts if "unmatched" in part]
    if unmatched:
        total["unmatched"] = sorted(set.intersection(*unmatched))
    for part in parts:
        for key in ("total", "default", "user"):
            total[key] += int(part.get(key, 0))
        for pattern, n in part.get("by_pattern", {}).items():
            total["by_pattern"][pattern] = total["by_pattern"].get(pattern, 0) + n
        for pattern, paths in part.get("examples", {}).items():
            merged = sorted(set(total["examples"].get(pattern, [])) | set(paths))
            total["examples"][pattern] = merged[:EXAMPLES_PER_PATTERN]
    return total
