"""The chunk of work worker processes run most: hashing files one after another (the processes
themselves: processes.py)."""

from __future__ import annotations

import inspect
import io
import os
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .sources.base import READ_SIZE, FileChangedWhileHashing, HashOutcome, meter_taken
from .units import shown_name

if TYPE_CHECKING:
    from .sources.base import Parse, Source


# What became of it and what to do: "disappeared" alone left the user asking whether something was lost
# (what it keeps: said otherwise of a file no version recorded, commit._unrecorded_said)
VANISHED_KEPT = "what was recorded of it stays in this version; the next run records it as removed, or at its new path"
VANISHED = ("file disappeared before or while it was hashed (deleted or moved while this run went on): "
            f"{VANISHED_KEPT}; nothing to do unless it recurs (then run when nothing is deleting or moving files under "
            "the site)")


def hash_one(source: "Source", path: str, buffer: bytearray, parse: "Parse | None" = None) -> HashOutcome | tuple[str, str]:
    """The outcome for one file, or (error kind, message); never raises OSError."""
    try:
        return source.hash_file(path, buffer) if parse is None else source.hash_file(path, buffer, parse)
    except FileChangedWhileHashing as exc:
        return "changed_while_hashing", str(exc)
    except (FileNotFoundError, NotADirectoryError):  # (its folder replaced by a file since the listing: gone too)
        return "vanished", VANISHED
    except PermissionError as exc:
        if exc.strerror is None and exc.args:  # a cloud source's own words: the sign-in and the permission to ask for
            return "unreadable", str(exc)
        # (strerror is "Permission denied" again: said once, with what to do)
        if (folder := _unsearchable_folder(source, path)) is not None:
            return "unreadable", (f"permission denied: this user may not enter its folder {folder} (no search (x) "
                                  f"permission on it, taken away since it was listed): give this user read and search "
                                  f"(x) permission on {folder}, and run again")
        return "unreadable", "permission denied: this user may not read the file (give it read permission)"
    except OSError as exc:
        return "unreadable", f"cannot read: {exc.strerror or exc}"


def _unsearchable_folder(source: "Source", path: str) -> str | None:
    """The first folder above a local file that this user may not enter (a person folder made `chmod 000` while the
    run went on), named as the messages name folders (`1003/`, or the site root); None if each could be entered (the
    file's own permission was refused) or the source is not a local folder. The file's message named the file, whose
    permission was not the cause: giving it read permission changed nothing."""
    root = getattr(source, "root", None)
    absolute = getattr(source, "absolute", None)
    if not isinstance(root, str) or absolute is None:
        return None
    parts = path.split("/")
    for depth in range(len(parts)):
        try:
            os.stat(absolute("/".join(parts[:depth + 1])), follow_symlinks=False)  # refused if its folder may not be entered
        except PermissionError:
            return shown_name("/".join(parts[:depth]) + "/") if depth else f"the site root ({shown_name(root)})"
        except OSError:
            return None
    return None


@dataclass
class HashedChunk:
    """Results for consecutive files, packed (16-byte digests, int64 arrays) so a
    million results cost tens of MB, not a million Python objects."""

    digests: bytes
    sizes: array
    mtimes: array
    errors: list[tuple[int, str, str]]  # (offset in chunk, kind, message)
    facts: list[tuple[int, str, str]] = field(default_factory=list)  # (offset in chunk, kind, facts as JSON)
    contents: list[tuple[int, str, bytes]] = field(default_factory=list)  # (offset, kind, the bytes): raw_kinds
    metered: int = 0  # bytes of its files said while they were read (sources.base.metered), for the progress line
    etags: list[tuple[int, str]] = field(default_factory=list)  # (offset in chunk, a cloud object's etag as read)


_NO_DIGEST = bytes(16)


def hash_chunk(source: "Source", paths: list[str], facts_kinds: frozenset[str] = frozenset(),
               raw_kinds: frozenset[str] = frozenset(), mask: list[bool] | None = None,
               unless: list[bytes | None] | None = None) -> HashedChunk:
    """Hash files one after another (in a worker process: one GIL per core). A file whose kind (from its
    path: validate.kinds) is in `facts_kinds` is parsed from the bytes hashed, so validation need not read
    it again (one read per file); one in `raw_kinds` (small files whose parser may not run here) comes
    back whole, up to MAX_RAW_BYTES, for the caller to parse. `mask`: parse only the files whose flag is
    true (None: every file of those kinds); `unless`: a file whose flag is false but that has an MD5 here (the
    recorded one) is parsed only if its content turns out to be another (its bytes, up to MAX_RAW_BYTES, are
    kept while it is hashed: most such files were only touched, and their facts are cached)."""
    buffer = bytearray(READ_SIZE)
    meter_taken()  # (what an earlier chunk failed with left said)
    digests = bytearray()
    sizes, mtimes = array("q"), array("q")
    errors: list[tuple[int, str, str]] = []
    facts: list[tuple[int, str, str]] = []
    contents: list[tuple[int, str, bytes]] = []
    etags: list[tuple[int, str]] = []
    parsers: dict[str, "Parse"] = {}
    if (facts_kinds or raw_kinds) and "parse" in inspect.signature(source.hash_file).parameters:
        from .validate.kinds import kind_of
        from .validate.readers import parser

        parsers = {kind: parser(kind) for kind in facts_kinds}
        parsers.update((kind, _whole) for kind in raw_kinds)
    for k, path in enumerate(paths):
        recorded = unless[k] if unless is not None and mask is not None and not mask[k] else None
        kind = kind_of(path) if parsers and (mask is None or mask[k] or recorded is not None) else None
        parse = parsers.get(kind) if kind else None
        out = hash_one(source, path, buffer, _whole if parse is not None and recorded is not None else parse)
        if isinstance(out, HashOutcome):
            digests += out.digest
            sizes.append(out.size)
            mtimes.append(out.mtime_ns)
            if out.etag is not None:
                etags.append((k, out.etag))
            if recorded is not None and parse is not None:
                if out.digest != recorded and isinstance(out.facts, bytes):  # changed: parsed from the bytes read
                    if kind in raw_kinds:
                        contents.append((k, kind, out.facts))  # type: ignore[arg-type]
                    else:
                        facts.append((k, kind, parse(io.BytesIO(out.facts))))  # type: ignore[arg-type]
            elif isinstance(out.facts, bytes):
                contents.append((k, kind, out.facts))  # type: ignore[arg-type]
            elif out.facts is not None:
                facts.append((k, kind, out.facts))  # type: ignore[arg-type]
        else:
            digests += _NO_DIGEST
            sizes.append(0)
            mtimes.append(0)
            errors.append((k, *out))
    return HashedChunk(bytes(digests), sizes, mtimes, errors, facts, contents, meter_taken(), etags)


MAX_RAW_BYTES = 4 << 20


def _whole(f) -> bytes | None:
    """A small file's bytes (None if larger than MAX_RAW_BYTES: validation reads it)."""
    data = f.read(MAX_RAW_BYTES + 1)
    return data if len(data) <= MAX_RAW_BYTES else None
