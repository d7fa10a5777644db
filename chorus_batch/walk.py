"""Walking a local tree with the standard library only, and the early listing.

walk_local is what the worker processes of a local listing run: plain lists, no Arrow or polars,
which is what makes forking them safe (LocalSource builds the record batches).

The early listing: a command that lists a local site starts walking it in worker processes as soon
as it knows the site, before it loads polars, pyarrow, numpy and DuckDB (about half a second, measured
with `python -X importtime`); the walk goes on while they load, and the run's listing
(LocalSource.list_files) takes its results instead of walking the tree again. Nothing here imports
more than the standard library, or the early listing would wait for the libraries it overlaps.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ntpath
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field

from .processes import owned, pool_executor, stop_pool
from .times import MAX_NS, MIN_NS, clamp_ns
from .units import plural

# what a folder that could not be listed means for its files, and what to do (the walk keeps no rows: commit.py does)
_DIR_KEPT = ("what was recorded below it is kept: give this user read and search (x) permission on it, or check the "
             "file system, and run again")


# a path past PATH_MAX (ENAMETOOLONG): permissions were not the cause, and granting them changes nothing
_TOO_LONG = "its path is longer than the system allows (PATH_MAX, 4096 bytes on Linux), so it cannot be opened"


def _dir_kept(exc: OSError, root: str = "", rel_dir: str = "") -> str:
    """What a folder that could not be listed means, and what to do for this reason."""
    if exc.errno == errno.ENAMETOOLONG:
        return f"{_TOO_LONG}; what was recorded below it is kept: shorten the names of the folders above it, and run again"
    # Its folder listed (that is how it was found) but not searchable (`chmod -R 644`): the folder itself was blamed,
    # and giving it permissions changed nothing
    above = os.path.dirname(rel_dir)
    if isinstance(exc, PermissionError) and rel_dir and not os.access(os.path.join(root, above), os.X_OK):
        named = f"{printable(above)}/" if above else f"the site root ({root})"
        return (f"its folder {named} may be listed but not searched (no x permission), so no folder in it can be "
                f"opened; what was recorded below it is kept: give this user search (x) permission on {named}, "
                "and run again (chmod -R u+X gives it to every folder)")
    return _DIR_KEPT


def long_path(path: str, *, windows: bool = os.name == "nt") -> str:
    """`path` as the system calls take it past 260 characters: on Windows, an absolute path in its extended-length
    form (C:\\data\\x as \\\\?\\C:\\data\\x, \\\\server\\share\\x as \\\\?\\UNC\\server\\share\\x), which Windows opens
    whatever its length, long paths enabled on the computer or not. Without it a file deeper than MAX_PATH could not
    be listed, opened or looked at, and was recorded as vanished (a folder as gone) though it was there. Only for
    the system calls: the paths recorded and shown keep the form the user gave. Elsewhere, and for a path that is
    relative or already in that form (\\\\?\\, \\\\.\\), `path` as it is."""
    if not windows or path.startswith(("\\\\?\\", "\\\\.\\", "//?/", "//./")):
        return path
    # the prefix turns off Windows' own normalisation: '/' separators and '.', '..' parts are resolved here first
    normal = ntpath.normpath(path)
    if normal.startswith("\\\\"):  # a network share
        return "\\\\?\\UNC\\" + normal[2:]
    if re.match(r"^[A-Za-z]:\\", normal):
        return "\\\\?\\" + normal
    return path  # relative, or relative to a drive's current folder (C:x): not made absolute here


def absolute_root(path: str, *, posix: bool = os.name != "nt") -> str:
    """A local root as given (`--site`, `[site] root`, a config's roots), absolute, with its '..' parts taken as the
    system takes them: the folder above where the path before it leads. os.path.abspath drops `link/..` as text, so
    `--site /scratch/me/../project/site` with /scratch/me a link to /lustre/u/me named /scratch/project/site, the
    shell's and every other tool's /lustre/u/project/site being another folder: a folder that does not exist was
    said so, and one that did (another copy of the site) was listed, while the run's summary named the folder
    meant. On Windows '..' is taken as text by the system too: abspath there. The root's own name, a link or not, is
    kept as given (it is the location recorded)."""
    absolute = os.path.abspath(path)
    if not posix:
        return absolute
    parts = (path if os.path.isabs(path) else os.path.join(os.getcwd(), path)).split("/")
    if ".." not in parts:
        return absolute
    last = len(parts) - 1 - parts[::-1].index("..")
    return os.path.normpath(os.path.join(os.path.realpath("/".join(parts[:last + 1]) or "/"), *parts[last + 1:]))


def is_junction(entry: os.DirEntry) -> bool:
    """A directory junction (Windows' mklink /J, as backup and storage tools make): a link to a folder that
    DirEntry.is_symlink does not count (it counts symbolic links only) and is_dir(follow_symlinks=False) takes for a
    folder of the site, so the walk went through it whether links were followed or not: the folder it leads to (the
    site again, a folder above it, another disk) was listed as the site's. Taken as a link here. (Python 3.12
    has DirEntry.is_junction; 3.11 reads the reparse tag of the entry's own stat, which the listing carries.)"""
    own = getattr(entry, "is_junction", None)
    if own is not None:
        return own()
    return getattr(entry.stat(follow_symlinks=False), "st_reparse_tag", 0) == getattr(stat, "IO_REPARSE_TAG_MOUNT_POINT",
                                                                                         0xA0000003)


NON_UTF8_FOLDER = "folder name is not valid UTF-8; rename it to track its files"
BATCH_ROWS = 65_536  # rows per listing batch (every source's)
Error = tuple[str, str, str]  # (srcfile, kind, message): a problem met while listing


def name_error(rel: str) -> str | None:
    """Names that cannot be stored as UTF-8 text (undecodable bytes on POSIX)."""
    if rel.isascii():
        return None
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


@dataclass
class WalkResult:
    # Plain lists, not Arrow: worker processes then run nothing but the standard
    # library, which is what makes forking them safe. The parent builds the batches.
    # (paths, sizes, mtimes, inodes, change times: None where the file system gives none, LISTING_SCHEMA)
    chunks: list[tuple[list[str], list[int], list[int], list, list]] = field(default_factory=list)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    subdirs: list[str] = field(default_factory=list)  # only with collect_dirs
    # With links followed: the files reached through a link to outside the site, as (path, size, mtime_ns, real
    # path, the link). Two links to one outside folder reach its files twice: unique_linked keeps one path of each, once
    # the whole walk is known (they may lie in folders other workers walk).
    linked: list[tuple[str, int, int, str, str]] = field(default_factory=list)


def walk_local(root: str, rel_dirs: list[str], follow_symlinks: bool, collect_dirs: bool = False) -> WalkResult:
    """Walk `rel_dirs` (site-relative, '' for the root itself) below `root`.

    With `collect_dirs`, subdirectories are returned instead of walked (used to
    list the root and share its folders out). Module-level so worker processes
    can run it. Paths are built with '/' so the manifest holds POSIX paths on
    Windows too.
    """
    out = WalkResult()
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    inos: list[int | None] = []
    ctimes: list[int | None] = []
    # With links followed, each folder walked carries its real path: a link to a folder is judged by where it
    # leads (link_problem), the same in whichever worker walks it. (A set of the link targets seen, per worker,
    # walked a linked parent once more before it saw the loop, and the root again through a link to it.)
    real_root = os.path.realpath(long_path(root)) if follow_symlinks else root

    def flush() -> None:
        nonlocal paths, sizes, mtimes, inos, ctimes, add_path, add_size, add_mtime, add_ino, add_ctime
        if paths:
            out.chunks.append((paths, sizes, mtimes, inos, ctimes))
            paths, sizes, mtimes, inos, ctimes = [], [], [], [], []
            add_path, add_size, add_mtime = paths.append, sizes.append, mtimes.append
            add_ino, add_ctime = inos.append, ctimes.append

    # each folder to walk: (path, real path, the followed link it is reached through, "" if none)
    stack = [(rel, real, rel if follow_symlinks and not _within(real, real_root) else "")
             for rel in reversed(rel_dirs)
             for real in [os.path.realpath(long_path(os.path.join(root, rel))) if follow_symlinks else ""]]

    def push_dir(rel: str, real: str, link: str) -> None:
        if collect_dirs:
            out.subdirs.append(rel)  # (folders_to_walk says those whose name is not UTF-8)
        elif not rel.isascii() and (bad := name_error(rel)) is not None:  # said once, of the folder: its files' own
            # names may be fine (isascii first, here and for each file: name_error's call cost the walk of 100k files,
            # in 55k folders, 0.04 s)
            add_error((bad + "/", "non_utf8_name", NON_UTF8_FOLDER))
        else:
            stack.append((rel, real, link))

    add_path, add_size, add_mtime, add_error = paths.append, sizes.append, mtimes.append, out.errors.append
    add_ino, add_ctime = inos.append, ctimes.append
    add_linked = out.linked.append
    add_folder = stack.append
    loops = mount_loops(root)
    windows = os.name == "nt"
    # The folders this walk was given, listed as folders before it (minutes before, for the last a worker walks): each
    # is seen to be no link before it is walked. A folder found below is walked right after its listing; looking at
    # each of those too cost the no-change run on 100k files 0.06 s of its 1.2 s (an open and a close a folder).
    given = set(rel_dirs) if not follow_symlinks and _NOFOLLOW_DIRS else set()
    said_gone: set[str] = set()  # the folders said vanished_dir (gone_from)
    # A folder's path is the root's with a separator, then its own: os.path.join for each of the 55k folders of 100k
    # files cost 0.03 s of the walk
    below_root = os.path.join(root, "")
    while stack:
        rel_dir, real_dir, link_dir = stack.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        no_links = rel_dir in given and rel_dir != ""
        try:
            if no_links:
                _no_link_at(below_root + rel_dir)
            it = os.scandir(long_path(below_root + rel_dir if rel_dir else root))
        except OSError as exc:
            if no_links and exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(
                    os.path.join(root, rel_dir)):
                # listed as a folder, a link when walked (moved to another disk and linked back meanwhile): said as the
                # next run says it, never walked through (files outside the site were listed, hashed and recorded)
                add_error((printable(rel_dir), "symlink", "symbolic link not followed (a folder when the tree's "
                           "listing began, replaced by a link since; --follow-symlinks, or follow_symlinks = true in "
                           "[run] of chorus.toml, follows it)"))
                continue
            if isinstance(exc, (FileNotFoundError, NotADirectoryError)):  # (gone, or a file put in its place)
                gone = gone_from(root, rel_dir)
                if gone not in said_gone:  # (the folders of one gone folder, each met gone: said once)
                    said_gone.add(gone)
                    add_error((gone + "/", "vanished_dir", vanished_dir_said(gone, rel_dir)))
                continue
            # Recorded with a trailing '/': the pipeline keeps earlier rows below it.
            add_error((rel_dir + "/" if rel_dir else "", "unreadable_dir",
                       f"cannot list directory: {exc.strerror or exc}; {_dir_kept(exc, root, rel_dir)}"))
            continue
        with it:
            try:
                entries = list(it)  # a folder can fail while read (EIO, ESTALE, EACCES): then nothing below it is seen
            except OSError as exc:
                add_error((rel_dir + "/" if rel_dir else "", "unreadable_dir",
                           f"cannot list directory (failed while reading it): {exc.strerror or exc}; {_dir_kept(exc)}"))
                entries = []
            for entry in entries:
                rel = prefix + entry.name
                try:
                    junction = windows and is_junction(entry)
                    if entry.is_dir(follow_symlinks=False) and not junction:
                        if loops and rel in loops:
                            add_error((printable(rel), *loops[rel]))
                            continue
                        if follow_symlinks or collect_dirs or not rel.isascii():
                            push_dir(rel, os.path.join(real_dir, entry.name) if follow_symlinks else "", link_dir)
                        else:  # (push_dir's own, without its call: one for each of 55k folders of 100k files)
                            add_folder((rel, "", link_dir))
                        continue
                    real, link = None, link_dir  # where a file reached through a link is, and that link
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if link_dir:
                            real = os.path.join(real_dir, entry.name)
                    elif junction or entry.is_symlink():
                        if not follow_symlinks:
                            add_error((printable(rel), "symlink", ("directory junction" if junction else "symbolic link")
                                       + " not followed (--follow-symlinks, or follow_symlinks = true in [run] of "
                                         "chorus.toml, follows it)"))
                            continue
                        try:
                            st = entry.stat(follow_symlinks=True)
                        except OSError as exc:  # where it leads cannot be reached: said as a link's problem
                            add_error((printable(rel), *broken_link(entry.path, exc)))
                            continue
                        if stat.S_ISDIR(st.st_mode):
                            target = os.path.realpath(entry.path)
                            problem = link_problem(target, real_dir, real_root)
                            if problem is not None:
                                add_error((printable(rel), *problem))
                            else:
                                push_dir(rel, target, rel)
                            continue
                        if not stat.S_ISREG(st.st_mode):
                            add_error((printable(rel), "special_file", "link to a non-regular file; skipped"))
                            continue
                        # A link to a file of the site is not followed, as one to a folder of it: the same file
                        # listed twice is two rows, two uploads and two registry entries for one content.
                        target = os.path.realpath(entry.path)
                        if _within(target, real_root):
                            add_error((printable(rel), "symlink_inside", (
                                f"link to {os.path.relpath(target, real_root).replace(os.sep, '/')}, a file of the "
                                "site: not followed (it is listed under its own path)")))
                            continue
                        real, link = target, rel
                    else:
                        add_error((printable(rel), "special_file", "not a regular file (device, socket or FIFO); skipped"))
                        continue
                except (FileNotFoundError, NotADirectoryError):  # (its folder replaced by a file: no permission to give)
                    # Kept as recorded (commit.unseen_files), as a file gone while it is hashed: its folder may be
                    # back by the commit (renamed aside and back: a sync tool's, an editor's), and was removed here
                    add_error((printable(rel), "vanished", "file disappeared while the tree was listed (deleted or moved "
                                                          "meanwhile): what was recorded of it stays in this version; "
                                                          "the next run records it as removed, or at its new path; "
                                                          "nothing to do unless it recurs (then run when nothing is "
                                                          "deleting or moving files under the site)"))
                    continue
                except OSError as exc:
                    add_error((printable(rel), "unreadable", f"cannot stat: {exc.strerror or exc}; " + (
                        f"{_TOO_LONG}; what was recorded of it is kept: shorten its name or those of the folders above "
                        "it, and run again" if exc.errno == errno.ENAMETOOLONG else
                        "what was recorded of it is kept: give this user search (x) permission on its folder, or check "
                        "the file system")))
                    continue
                if not rel.isascii() and (bad := name_error(rel)) is not None:
                    add_error((bad, "non_utf8_name", "file name is not valid UTF-8; rename it to track it"))
                    continue
                mtime = st.st_mtime_ns
                if not MIN_NS <= mtime <= MAX_NS:  # beyond what the manifest's 64-bit nanoseconds hold
                    add_error((printable(rel), "mtime_out_of_range",
                               f"modification time {mtime // 10**9} s since 1970 is outside 1678..2262; recorded as "
                               "the nearest representable time (fix the file's clock: touch it)"))
                    mtime = clamp_ns(mtime)
                if real is not None:
                    add_linked((rel, st.st_size, mtime, real, link))
                    continue
                add_path(rel)
                add_size(st.st_size)
                add_mtime(mtime)
                # (of the same stat: no call more. Windows' scandir gives no inode (0) and a creation time as ctime)
                add_ino(st.st_ino or None)
                add_ctime(None if windows else st.st_ctime_ns)
                if len(paths) >= BATCH_ROWS:
                    flush()
    flush()
    return out


def gone_from(root: str, rel_dir: str) -> str:
    """The folder that is gone, of `rel_dir` (site-relative, listed by its folder and gone when entered): `rel_dir`, or
    the highest of the folders above it that is gone too (a folder renamed aside and back while it was walked: listed
    under its other name, whose folders are gone when entered). Its own folder was listed while it was there: that
    listing is out of date (commit.stale_listings keeps what was recorded in it and not listed)."""
    while (above := rel_dir.rpartition("/")[0]) and not os.path.isdir(long_path(os.path.join(root, above))):
        rel_dir = above
    return rel_dir


def vanished_dir_said(gone: str, entered: str) -> str:
    """What a folder gone between its folder's listing and its own says: what became of the recorded rows, and why."""
    above = gone.rpartition("/")[0]
    named = f"{printable(above)}/" if above else "the site root"
    met = f" (met entering {printable(entered)}/)" if entered != gone else ""
    return (f"directory disappeared (deleted, moved, or replaced by a file) after its folder was listed{met}, so that "
            f"listing of {named} is out of date (a folder renamed aside and back, by a sync tool or an editor, is "
            f"listed under its other name): nothing recorded under {named} is removed in this version (what this run "
            "did not list there is kept); the next run records what really changed; nothing to do unless it recurs "
            "(then run when nothing is moving folders under the site)")


# Where a folder can be opened so that a symbolic link at its own name is refused (POSIX)
_NOFOLLOW_DIRS = bool(getattr(os, "O_NOFOLLOW", 0) and getattr(os, "O_DIRECTORY", 0))


def _no_link_at(path: str) -> None:
    """Raise ELOOP (or ENOTDIR) if `path`, a folder when its folder was listed, is a symbolic link now: a walk that
    does not follow links went through a link put in its place since (minutes later, for a root folder a worker
    walks last). Opened without following a link, not lstat'ed: a look that costs the same, and one call."""
    os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)))


def unique_linked(rows: list[tuple[str, int, int, str, str]]) -> tuple[list[tuple[str, int, int]], list[Error]]:
    """The files reached through links to outside the site (WalkResult.linked, of the whole walk), each outside file
    once: under the first of its paths (in path order, the same whatever walked it); and an error for each link
    whose files were listed under another path already, naming where."""
    first: dict[str, str] = {}
    kept: list[tuple[str, int, int]] = []
    left: dict[str, tuple[str, str, int]] = {}  # link -> (where its files are listed, the outside folder, files)
    for rel, size, mtime, real, link in sorted(rows):
        if (other := first.setdefault(real, rel)) == rel:
            kept.append((rel, size, mtime))
            continue
        # the same file under the other path: the link's folder there, and the place outside it leads to; or, where
        # the other path (or the file) does not end in the same path below its link (a link to a file of the same
        # outside folder, inside it: reached through `<link>/a` and `<link>/dir/f.txt`), that path and that file
        below = rel[len(link):]  # "/<path below the link>" ("" for a link to a file)
        if other.endswith(below) and real.endswith(below):
            seen = (other[:len(other) - len(below)], real[:len(real) - len(below)], 0)
        else:
            seen = (other, real, 0)
        where, folder, n = left.get(link, seen)
        left[link] = (where, folder, n + 1)
    errors = [(printable(link), "symlink_duplicate", (
        f"{plural(n, 'file')} here {'is' if n == 1 else 'are'} also reached through {printable(where)} (links to one place outside the site, "
        f"{folder}): listed once, there; remove one of the links")) for link, (where, folder, n) in sorted(left.items())]
    return kept, errors


def mount_loops(root: str) -> dict[str, tuple[str, str]]:
    # Read at most once a minute per root in each process: walk_local is called per batch of folders (403 times in a
    # 20k-file first run), and an HPC node's table holds hundreds of mounts
    return _mount_loops(root, int(time.monotonic() // 60))


@functools.lru_cache(maxsize=8)
def _mount_loops(root: str, _minute: int) -> dict[str, tuple[str, str]]:
    """The folders of the site (site-relative, '/'-separated) on which the site root or a folder above them is mounted
    again (a bind mount: `mount --bind /data/site /data/site/Metadata/x`), or another folder of the site, each with
    its kind (`mount_loop`, `mount_inside`) and message. Walked, such a folder
    listed the site a second time under its path, and no link shows it (realpath does not see through a mount), so
    it is found from the system's table of mounts (/proc/self/mountinfo: no cost per folder walked); {} where there is
    none."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            table = f.read()
    except OSError:
        return {}
    real_root = os.path.realpath(root)
    found: dict[str, tuple[str, str]] = {}
    # (device, the folder of its file system mounted, where): the mount point, with space, tab, newline and backslash
    # written as octal escapes
    mounts = [(fields[2], _unescaped(fields[3]), _unescaped(fields[4]))
              for fields in (line.split(b" ") for line in table.splitlines()) if len(fields) >= 5]
    for device, source_root, point in mounts:
        if point == real_root or not _within(point, real_root):
            continue
        parts = os.path.relpath(point, real_root).split(os.sep)
        try:
            mounted = os.stat(point)
            for k in range(len(parts)):
                here = os.path.join(real_root, *parts[:k])
                if os.path.samestat(os.stat(here), mounted):
                    where = "the site root" if k == 0 else f"the folder {'/'.join(parts[:k])}/ that holds it"
                    found["/".join(parts)] = ("mount_loop", f"a mount of {where} ({here}) inside itself: a loop, not "
                                              "walked (its files are listed under their own path); unmount it, or "
                                              "mount it outside the site")
                    break
            else:  # another folder of the site mounted here (`mount --bind /data/site/OMOP /data/site/Metadata/x`)
                inside = _site_folder_mounted(mounts, device, source_root, point, mounted, real_root)
                if inside is not None:
                    found["/".join(parts)] = ("mount_inside", f"a mount of {inside}/, a folder of the site: not walked "
                                              "(its files are listed under their own path, not twice); unmount it, or "
                                              "mount it outside the site")
        except OSError:
            continue
    return found


def _unescaped(field: bytes) -> str:
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def _site_folder_mounted(mounts: list[tuple[bytes, str, str]], device: bytes, source_root: str, point: str,
                         mounted: os.stat_result, real_root: str) -> str | None:
    """The site-relative folder that the mount at `point` shows again, where another mount of its file system puts
    that folder inside the site; else None."""
    for other_device, other_root, other_point in mounts:
        if other_device != device or other_point == point or not _within(source_root, other_root):
            continue
        source = os.path.normpath(os.path.join(other_point, os.path.relpath(source_root, other_root)))
        if source != real_root and _within(source, real_root) and not _within(point, source):
            try:
                if os.path.samestat(os.stat(source), mounted):
                    return os.path.relpath(source, real_root).replace(os.sep, "/")
            except OSError:
                continue
    return None


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def link_problem(target: str, real_dir: str, real_root: str) -> tuple[str, str] | None:
    """Why a link (in the folder whose real path is `real_dir`) to the folder `target` (real) is not followed, as
    (kind, message); None: it is followed, once. A link to the root or to a folder above the link is a loop; one to
    another folder of the site would list its files a second time (they are listed under their own path)."""
    # (the root from a folder outside the site, linked in, is a loop too: it was said to be 'link to ./')
    if _within(real_dir, target) or target == real_root:
        where = "the site root" if target == real_root else "a folder that contains the link"
        return "symlink_loop", f"link to {where} ({target}): a loop, not followed"
    if _within(target, real_root):
        inside = os.path.relpath(target, real_root).replace(os.sep, "/")
        return "symlink_inside", (f"link to {inside}/, a folder of the site: not followed (its files are listed under "
                                  "their own path)")
    return None


def broken_link(path: str, exc: OSError) -> tuple[str, str]:
    """(kind, message) of a link whose target cannot be reached: missing, a loop of links, or unreadable."""
    import errno

    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    if isinstance(exc, FileNotFoundError):
        # (a file system not mounted now, on a cluster: what was recorded under it is kept, commit.py)
        return "broken_symlink", (f"symbolic link to {target}, which does not exist (a file system not mounted?); what "
                                  "was recorded under it is kept: mount it, or remove the link to record its files as removed")
    if exc.errno == errno.ELOOP:
        return "symlink_loop", f"symbolic link to {target}: a loop of links that never reaches a file; skipped"
    # Not said to be gone (EACCES, ESTALE, EIO): what was recorded at or below the link is kept (commit.py)
    return "unreadable_link", (f"cannot reach the target of the link ({target}): {exc.strerror or exc}; what was "
                               "recorded under it is kept: check that this user may read it and its file system is mounted")


def printable(rel: str) -> str:
    return name_error(rel) or rel


def folders_to_walk(subdirs: list[str], tops: Callable[[str], bool] | None = None) -> tuple[list[str], list[Error]]:
    """The root's folders a listing walks, sorted (those `tops` accepts, if given), and the problems of
    those it cannot (names that are not UTF-8)."""
    folders, problems = [], []
    for name in sorted(subdirs):
        bad = name_error(name)
        if bad is not None:
            problems.append((bad + "/", "non_utf8_name", NON_UTF8_FOLDER))
        elif tops is None or tops(name):
            folders.append(name)
    return folders, problems


def walk_groups(folders: list[str], workers: int) -> list[list[str]]:
    """The folders shared out as tasks for `workers` processes: a few per process, so that one large
    person folder does not leave the others idle at the end. Each task is a run of neighbouring folders
    (`folders` come sorted), and the tasks are in that order: the workers take them in turn, so the listing
    comes back in about path order, and each block of it covers a narrow range of paths; the scan compares a
    block with the previous version's rows in that range only (hashing.rows_for). Every k-th folder for each
    task made every block span the whole site: each block was compared with all of the previous version
    (100k files, no change: `due` 0.042 -> 0.022 s of CPU)."""
    n_tasks = min(len(folders), workers * 8)
    if n_tasks == 0:
        return []
    size, extra = divmod(len(folders), n_tasks)
    bounds = [k * size + min(k, extra) for k in range(n_tasks + 1)]  # the first `extra` tasks one folder more
    return [folders[bounds[k]:bounds[k + 1]] for k in range(n_tasks)]


def walk_results(executor, futures: list[Future]) -> Iterator[WalkResult]:
    """The walks of `futures`, as each completes. Leaving early (an exception, a signal, the consumer
    closing the generator) stops `executor` at once; running out shuts it down."""
    # The futures are handed to as_completed and `futures` emptied: no other list of them is kept, so each
    # walk's result is let go once consumed (a million files' paths are not held to the end).
    completed = as_completed(futures[:])
    futures.clear()
    with owned(executor):
        for future in completed:
            yield future.result()


class EarlyListing:
    """The walk of a local site's root folders, started in worker processes before the libraries load.

    `top`: the root itself, walked here (its files and folders); `folders`: the folders the workers walk.
    `started_ns`: when the walk began: a run that takes these results counts its scan from then, so a file
    changed after it was walked is not taken as unchanged (hashing.Rules, racily-clean files)."""

    def __init__(self, root: str, *, follow_symlinks: bool, workers: int, tops: Callable[[str], bool] | None = None):
        self.root = root
        self.follow_symlinks = follow_symlinks
        self.started_ns = time.time_ns()
        self.top = walk_local(root, [""], follow_symlinks, collect_dirs=True)
        self.folders, _problems = folders_to_walk(self.top.subdirs, tops)  # (the listing records the problems)
        self._executor = pool_executor(workers)
        try:
            self._futures = [self._executor.submit(walk_local, root, group, follow_symlinks)
                             for group in walk_groups(self.folders, workers)]
        except BaseException:  # (no process can be started: none is left behind either)
            stop_pool(self._executor)
            raise

    def results(self) -> Iterator[WalkResult]:
        """The folders' walks, as each completes (once: the results are not kept)."""
        return walk_results(self._executor, self._futures)

    def close(self) -> None:
        """Stop the workers (idempotent): what a run did not take is not waited for."""
        stop_pool(self._executor)


_pending: EarlyListing | None = None  # the early listing no listing has taken yet (one per process)


@contextlib.contextmanager
def early_listing(root: str | None, *, follow_symlinks: bool, workers: int,
                  tops: Callable[[str], bool] | None = None) -> Iterator[EarlyListing | None]:
    """Start walking the local site `root` in `workers` processes (only the top-level folders `tops` accepts,
    if given: a shard's), for the block's listing to take (take_early_listing); on leaving the block, whatever
    was not taken is stopped, so no process is left behind. Nothing is started where it would not pay: no
    root, one worker, a root that is not a local folder, or a system where worker processes are spawned
    (they would load the libraries themselves)."""
    global _pending
    listing = None
    if root is not None and workers > 1 and sys.platform == "linux" and os.path.isdir(root):
        with contextlib.suppress(OSError):  # any problem is the run's to meet and report, when it lists
            listing = EarlyListing(absolute_root(root), follow_symlinks=follow_symlinks, workers=workers, tops=tops)
    _pending = listing
    try:
        yield listing
    finally:
        _pending = None
        if listing is not None:
            listing.close()


def take_early_listing(root: str, follow_symlinks: bool) -> EarlyListing | None:
    """The early listing of `root` (with the same symlink rule), if one is waiting; it is then the
    caller's."""
    global _pending
    listing = _pending
    if listing is None or listing.root != root or listing.follow_symlinks != follow_symlinks:
        return None
    _pending = None
    return listing


def early_listing_since_ns() -> int | None:
    """When the waiting early listing began (None: none is waiting): a scan counts from then."""
    return None if _pending is None else _pending.started_ns
