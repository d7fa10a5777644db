"""A directory on a local or HPC file system: the fast path.

`os.scandir` walks (measured: close to `find`, far cheaper than fsspec's generic walk);
a tree whose walk takes longer than INPROCESS_BUDGET_S in-process is finished by worker
processes, each walking a share of the top-level folders. A command that started walking the
site before it loaded its libraries (walk.py: the early listing) hands that walk over instead.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import pyarrow as pa

from ..errors import ConfigError, SourceError
from ..processes import pool_executor
from ..units import shown_name
from ..walk import (
    BATCH_ROWS,
    WalkResult,
    absolute_root,
    folders_to_walk,
    long_path,
    name_error,
    take_early_listing,
    unique_linked,
    walk_groups,
    walk_local,
    walk_results,
)
from ..times import clamp_ns
from .base import (READ_SIZE, FileChangedWhileHashing, FileStat, HashingReader, HashOutcome, Parse, hash_rest,
                   listing_batch, parse_through)

_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_regular(path: str, *, nofollow: bool = False) -> tuple[int, os.stat_result]:
    """A read descriptor of the regular file at `path`, and its fstat (hash_file's "before": asked once). Opened
    without blocking, then checked: a file replaced by a FIFO after the listing blocked the open for ever (a nightly
    run hung with no message until killed). `nofollow`: a symbolic link there is refused, not read through (a run
    that does not follow links listed a regular file: one replaced by a link since was hashed as the link's target, a
    file outside the site, and recorded as this one)."""
    def linked() -> OSError:
        return OSError(errno.ELOOP, "no longer a regular file (replaced by a symbolic link since it was listed, which "
                                    "this run does not follow: --follow-symlinks, or follow_symlinks = true in [run] "
                                    "of chorus.toml, follows links)", path)

    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_NONBLOCK | (_O_NOFOLLOW if nofollow else 0))
    except OSError as exc:
        if nofollow and exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise linked() from None
        raise
    try:
        # Windows has no O_NOFOLLOW: the open went through a link there; what was opened is the name's own file only
        # if the name is no link and leads to the same file (a link made after this look changes nothing: it is open)
        opened = os.fstat(fd)
        if nofollow and not _O_NOFOLLOW and (os.path.islink(path) or not os.path.samestat(opened, os.lstat(path))):
            raise linked()
        if not stat.S_ISREG(opened.st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file (replaced by a FIFO, socket, device or folder "
                                        "since it was listed)", path)
        if _O_NONBLOCK:  # (no effect on a regular file's reads, but not left to a file system to interpret)
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, opened
# A tree whose walk takes longer than this in-process is finished by worker processes. Starting them costs
# ~20 ms; a longer budget only walks more on one core: 100k files (2 workers) listed in 0.62 s with 0.25 s,
# 0.52 s with 0.05 s, 0.49 s with none; a 38-file tree in 2 ms in-process, 20 ms with the workers.
INPROCESS_BUDGET_S = 0.05


def _batches(walked: WalkResult) -> Iterator[pa.RecordBatch]:
    for paths, sizes, mtimes, inos, ctimes in walked.chunks:
        yield listing_batch(paths, sizes, mtimes, inos=inos, ctimes=ctimes)


WHOLE_BYTES = 1 << 20  # a file to parse that is no larger is read whole, in one go


def _read_upto(fd: int, n: int) -> bytes:
    """Up to n bytes from fd (fewer only at the end of the file)."""
    parts, got = [], 0
    while got < n:
        part = os.read(fd, n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _why_no_folder(path: str) -> str:
    """Why `path`, which is not a folder this process can see, is none (the words after it in a message): a missing
    path and a file were said alike ("not a readable directory"), and a missing one is often a disk not mounted."""
    from ..fsutil import file_above, unicode_twin

    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        above = file_above(path)
        if above is not None:
            return f"lies under {shown_name(str(above))}, which is a file"
        twin = unicode_twin(path)
        if twin is not None:  # (a name typed or pasted from macOS: the same letters, written another way)
            return (f"does not exist, but {shown_name(twin)} is there beside it, a name that differs from it only in "
                    "Unicode form (an accented letter as one character or as a letter and a combining mark)")
        if os.name != "nt" and (re.match(r"^(?:[A-Za-z]:\\|\\\\[^\\/]+\\)", os.path.basename(path))
                                or any(re.fullmatch(r"[A-Za-z]:", part) for part in path.split("/"))):
            # (a chorus.toml from the site's Windows machine, as import-config keeps its site_path: "does not exist
            # (a typo, or a disk that is not mounted?)" of the path joined to the config's folder)
            return ("does not exist: it ends in a Windows path (a drive or a network share), and this machine "
                    "is not Windows; give the root as this machine names it (under the mount point of that disk or "
                    "share here), or run on the Windows machine it is of")
        from ..urls import unexpanded_variable

        variable = unexpanded_variable(path, path)
        if variable is not None:  # (`--site '$SITE'`, a container's exec-form command: "a typo, or a disk?")
            return (f"does not exist: it names the environment variable {variable}, but nothing filled it in "
                    "(chorus-batch expands none, only a leading ~); let a shell fill it in (in double quotes, not "
                    "single; in a container or unit file, through sh -c), or write the path out")
        name = os.path.basename(path.rstrip("/" + os.sep))
        meant = os.path.join(os.path.dirname(path.rstrip("/" + os.sep)), name.strip())
        if name != name.strip() and name.strip() and os.path.isdir(meant):
            # (`--site "$(cat site.txt)"` of a file saved with Windows line ends: "a typo?" of a folder that is there,
            # as --db's name with a trailing '\r' is said)
            end = "starts" if name != name.lstrip() else "ends"
            return (f"does not exist, but {shown_name(meant)} does: the name {end} with white space (" + (
                "a carriage return, as a file saved with Windows line ends leaves; dos2unix it" if "\r" in name
                else "a space or a tab") + "); give the path without it")
        slashed = path.replace("\\", "/")
        if os.name != "nt" and slashed != path and os.path.isdir(slashed):
            # (`--site data\\site` from the Windows machine's notes: "a typo?" of a folder that is there)
            return (f"does not exist, but {shown_name(slashed)} does: '\\' separates folders on Windows only, and is "
                    "part of a name on this machine; give the path with '/'")
        if os.path.basename(path.rstrip("/" + os.sep)) == "-":
            # (`--site -`, as `report --out -` writes to standard output: "a typo, or a disk?" of a folder named '-')
            return ("does not exist: `-` is not standard input here; a site root is a folder (or a cloud URL): give "
                    "its path")
        return "does not exist (a typo, or a disk that is not mounted?)"
    except PermissionError:
        return "cannot be reached by this user (permission denied on a folder above it)"
    except OSError as exc:
        return f"cannot be looked at ({exc.strerror})"
    return "is a file, not a folder" if stat.S_ISREG(mode) else "is not a folder"


def root_gone(source) -> str | None:
    """Why a file of `source` could not be found when its root is not there as a whole (None: the root is there, or
    `source` is no local folder or cloud prefix): a recorded root on a disk not mounted, or one recorded on Windows
    (C:/data/site) read elsewhere, where it is a folder under the working one; a cloud prefix with no object left
    (FsspecSource.whole_root_gone). Each file was said "gone (removed or moved)"."""
    if callable(remote := getattr(source, "whole_root_gone", None)):  # a cloud prefix with no object under it
        return remote()
    root = getattr(source, "root", None)
    if not isinstance(root, str) or not getattr(source, "parallel_local", False):
        return None
    if os.path.isdir(root):
        # An empty folder where files were recorded: an NFS mount that did not come up leaves its mount point so.
        # Each file was a `file.unread` error of its own; one that lost only some files is read file by file.
        try:
            with os.scandir(root) as entries:
                if next(entries, None) is not None:
                    return None
        except OSError:
            return None  # (unreadable: each file's read says why)
        return f"the root it is read from, {shown_name(root)}, is an empty folder (a file system not mounted there?)"
    return f"the root it is recorded under, {shown_name(root)}, {_why_no_folder(root)}"


class LocalSource:
    """A directory on a local or HPC file system."""

    # Hashing many small files is bound by per-file Python work under the GIL
    # (measured: two threads slower than one), so local sources work in processes.
    parallel_local = True
    skips_tops = True  # list_files(tops=...) walks only the top-level folders a shard owns
    server_md5 = False

    def __init__(self, root: str | os.PathLike[str], *, follow_symlinks: bool = False, workers: int = 1,
                 inprocess_budget_s: float = INPROCESS_BUDGET_S, what: str = "--site / [site] root",
                 refuse_links: bool = False):
        self.root = absolute_root(os.fspath(root))
        self.what = what  # where the root was given: its messages name it
        # (messages: a control character in the folder's name escaped; `location`, recorded, is the real path: the
        # next run and `upload` must find the folder again, and two folders must never record alike)
        self.description = shown_name(self.root)
        self.location = self.root.replace(os.sep, "/")
        self.follow_symlinks = follow_symlinks
        self.linked: list[tuple[str, int, int, str, str]] = []  # (srcfile, size, mtime, real path, link) of list_files
        # A run that lists without following links hashes (and stats) no file through one (a file replaced by a link
        # since it was listed is refused). Not so a source reopened from the manifest (validate, upload): its files may
        # have been recorded through links by a run that followed them.
        self.refuse_links = refuse_links and not follow_symlinks
        self.workers = max(1, workers)
        self.inprocess_budget_s = inprocess_budget_s
        self.listed_as: tuple[int, int] | None = None  # (st_dev, st_ino) of the root when its listing began

    def check(self) -> None:
        if (bad := name_error(self.root)) is not None:  # (the manifest records it as text: an 'internal error')
            raise ConfigError(
                f"{'site root' if self.what.startswith('--site') else 'root'} {bad} has a folder name that is not "
                "valid UTF-8 (shown as \\x.. escapes), so the manifest cannot record where its files are; nothing "
                "was done", where=self.what,
                fix="rename that folder to a UTF-8 name (convmv -f latin1 -t utf8 converts Latin-1 names), or give "
                    f"{self.what} through a symbolic link whose own path is UTF-8")
        if not os.path.isdir(self.root):
            from ..urls import refuse_too_long

            refuse_too_long(self.root, self.what)  # (as --db and --out: not the whole 4k path and "point it at OMOP/")
            raise ConfigError(
                f"{'site root' if self.what.startswith('--site') else 'root'} is not a readable directory: {shown_name(self.root)} "
                f"{_why_no_folder(self.root)}", where=self.what,
                fix=f"point {self.what} at the folder that holds " + (
                    "OMOP/ and the person folders" if self.what.startswith("--site") else "the person folders of that modality"),
            )

    def list_files(self, errors: list[tuple[str, str, str]],
                   tops: Callable[[str], bool] | None = None) -> Iterator[pa.RecordBatch]:
        """`tops`: walk only the top-level folders it accepts (a shard's person folders: a shard of a 100k
        tree would otherwise walk all of it); files at the root are always listed."""
        linked: list[tuple[str, int, int, str, str]] = []
        yield from self._walk(errors, tops, linked)
        # the files reached through links to outside the site, now that every link is known: each once
        kept, duplicates = unique_linked(linked)
        errors.extend(duplicates)
        self.linked = linked  # every path reached through such a link: a shard records them for its merge (shards.py)
        for start in range(0, len(kept), BATCH_ROWS):
            part = kept[start:start + BATCH_ROWS]
            yield listing_batch([r[0] for r in part], [r[1] for r in part], [r[2] for r in part])

    def _walk(self, errors: list[tuple[str, str, str]], tops: Callable[[str], bool] | None,
              linked: list[tuple[str, int, int, str, str]]) -> Iterator[pa.RecordBatch]:
        self.check()
        with contextlib.suppress(OSError):
            st = os.stat(self.root)
            self.listed_as = (st.st_dev, st.st_ino)
        early = take_early_listing(self.root, self.follow_symlinks)
        top = early.top if early is not None else walk_local(self.root, [""], self.follow_symlinks, collect_dirs=True)
        for path, _kind, message in top.errors:
            if path in ("", "/"):  # the root itself: nothing can be said about the site
                if early is not None:
                    early.close()
                raise SourceError(f"cannot list the site root {self.root}: {message}", where=self.root,
                                  fix="check the path and that this user may read it")
        errors.extend(top.errors)
        linked.extend(top.linked)
        yield from _batches(top)
        top_dirs, problems = folders_to_walk(top.subdirs, tops)
        errors.extend(problems)
        if early is not None:
            if early.folders == top_dirs:  # walked already (or being walked) while the command started
                yield from self._walked(early.results(), errors, linked)
                return
            early.close()  # another choice of folders (a shard's): walked below

        # Small trees finish in-process; large ones go to worker processes.
        started = time.perf_counter()
        i = 0
        while i < len(top_dirs) and (self.workers == 1 or time.perf_counter() - started < self.inprocess_budget_s):
            res = walk_local(self.root, [top_dirs[i]], self.follow_symlinks)
            errors.extend(res.errors)
            linked.extend(res.linked)
            yield from _batches(res)
            i += 1
        remaining = top_dirs[i:]
        if not remaining:
            return
        executor = pool_executor(self.workers)
        yield from self._walked(walk_results(executor, [executor.submit(walk_local, self.root, group, self.follow_symlinks)
                                                         for group in walk_groups(remaining, self.workers)]), errors,
                                linked)

    @staticmethod
    def _walked(results: Iterator[WalkResult], errors: list[tuple[str, str, str]],
                linked: list[tuple[str, int, int, str, str]]) -> Iterator[pa.RecordBatch]:
        for res in results:
            errors.extend(res.errors)
            linked.extend(res.linked)
            yield from _batches(res)
            del res

    def gone_since_listing(self) -> str | None:
        """Why the root is no longer the folder this run listed (None: it is): renamed, removed or unmounted while the
        run went on. Its files were each recorded `vanished` (or hashed from the disk under the mount point), and the
        version committed of that said renamed files removed, as if the site had changed."""
        if self.listed_as is None:
            return None
        try:
            st = os.stat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return "is no longer there"  # (not "a typo?": it was listed)
        except OSError as exc:
            return f"cannot be looked at any more ({exc.strerror})"
        if (st.st_dev, st.st_ino) != self.listed_as:
            return "is now another folder (the file system unmounted, or the folder replaced)"
        return None

    def absolute(self, srcfile: str) -> str:
        """Where the file is, as the system calls take it (on Windows in the extended-length form: walk.long_path)."""
        root = self.root
        if os.sep == "/":  # (a listed path is relative and '/'-separated: the join was 10% of hashing a 4 KiB file)
            return long_path(root + srcfile if root.endswith("/") else root + "/" + srcfile)
        return long_path(os.path.join(root, *srcfile.split("/")))

    def open(self, srcfile: str) -> BinaryIO:
        return open(_open_regular(self.absolute(srcfile))[0], "rb")

    def stat(self, srcfile: str) -> FileStat:
        # (a reopened root follows a link: its file may be recorded through one; upload and validation check the MD5)
        st = os.stat(self.absolute(srcfile), follow_symlinks=not self.refuse_links)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"not a regular file: {srcfile}")
        return FileStat(st.st_size, clamp_ns(st.st_mtime_ns))

    def hash_file(self, srcfile: str, buffer: bytearray, parse: Parse | None = None) -> HashOutcome:
        """hash_file of the Source protocol: one open, one pass (sources/base.py)."""
        path = self.absolute(srcfile)
        for _attempt in (1, 2):
            fd, before = _open_regular(path, nofollow=self.refuse_links)
            facts = None
            try:
                if parse is None:
                    # Small files (most of a site) take one read; larger ones stream into the reused buffer.
                    data = os.read(fd, READ_SIZE)
                    digest = hashlib.md5(data, usedforsecurity=False)
                    total = len(data)
                    more = total == READ_SIZE
                elif before.st_size <= WHOLE_BYTES:  # a small file (most headers): parsed from memory, at C speed
                    # (one read: all its bytes came, and the end of the file is not asked for again with a second
                    # read; a file grown since gives one byte more, or moves its size: the checks below, as a short
                    # read of an unparsed file)
                    data = os.read(fd, before.st_size + 1)
                    if len(data) != before.st_size:
                        data += _read_upto(fd, before.st_size + 1 - len(data)) if data else b""
                    digest, total, more = hashlib.md5(data, usedforsecurity=False), len(data), False
                    facts = parse(io.BytesIO(data))
                else:  # the parser reads through the hashing reader; the rest is hashed below
                    reader = HashingReader(functools.partial(os.read, fd), hashlib.md5(usedforsecurity=False),
                                           before.st_size)
                    facts = parse_through(parse, reader)
                    digest, total, more = reader.digest, reader.done, not reader.eof
                if more:
                    with io.FileIO(fd, "r", closefd=False) as f:
                        total = hash_rest(f.readinto, buffer, digest, total)
                after = os.fstat(fd)
            finally:
                os.close(fd)
            # A file replaced by a rename or deleted while it was read keeps its size and mtime under the descriptor,
            # but has no name left (its link count fell to 0; free: no path looked up again): the bytes read are no
            # longer the path's, so it is read again (the new file's), or is gone (vanished). (A file system that
            # counts no links says 0 throughout; NFS renames an open file deleted by this client aside instead.)
            unlinked = before.st_nlink > 0 and after.st_nlink == 0
            if not unlinked and after.st_nlink < before.st_nlink:
                # One of its names went, but a hard link elsewhere (a backup tree linked to it) keeps it: was it this
                # one? Looked up only then (the bytes of a file renamed over were recorded as the path's, no error)
                try:
                    unlinked = not os.path.samestat(os.stat(path, follow_symlinks=not self.refuse_links), after)
                except (FileNotFoundError, NotADirectoryError):
                    unlinked = True
            if unlinked and not os.path.lexists(path):
                raise FileNotFoundError(errno.ENOENT, "deleted while it was hashed", path)
            # (the change time too: a write whose mtime was put back, `touch -d` or a copy keeping timestamps, while
            # the bytes were read left size and mtime as they were, and the MD5 was of bytes the path never held)
            if total == before.st_size and after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns \
                    and after.st_ctime_ns == before.st_ctime_ns and not unlinked:
                return HashOutcome(digest.digest(), before.st_size, clamp_ns(before.st_mtime_ns), facts)
        raise FileChangedWhileHashing("file changed while it was hashed (twice: something is writing it); what was "
                                      "recorded of it is kept: run again once it is written")
