"""Compare the current tree with the previous manifest, as set operations in DuckDB.

  added     path new, content not explained by a rename
  removed   path gone (full mode), or named in the delete list (append mode)
  replaced  same path, different MD5 (a file without an MD5, unverifiable: a different etag, size
            or mtime; it is never paired as a rename nor counted as equal to another)
  renamed   a removed and an added path with the same MD5 and size (not empty), paired
            one-to-one (in path order within each MD5/size group: first within a folder, then within a
            top folder, a person's, then anywhere)
  unchanged same path, same MD5 (counted, not listed)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from .fsutil import scratch_folder

if TYPE_CHECKING:
    import duckdb

CHANGE_SET_SCHEMA = {"change": pl.String, "srcfile": pl.String, "old_srcfile": pl.String, "old_file_id": pl.Int64}

_DIFF_SQL = """
WITH joined AS (
    SELECT c.srcfile AS c_path, c.md5 AS c_md5, c.size AS c_size,
           p.srcfile AS p_path, p.md5 AS p_md5, p.size AS p_size, p.file_id AS p_id,
           coalesce(c.md5 IS NULL AND p.md5 IS NULL AND c.etag IS NOT DISTINCT FROM p.etag
                    AND c.size IS NOT DISTINCT FROM p.size AND c.mtime_ns IS NOT DISTINCT FROM p.mtime_ns, FALSE)
               AS same_unverifiable
    FROM current_files c FULL OUTER JOIN previous_files p ON c.srcfile = p.srcfile
),
added_raw AS (
    SELECT c_path AS srcfile, c_md5 AS md5, c_size AS size FROM joined WHERE p_path IS NULL
),
-- Empty files all share one MD5: pairing them would invent renames (even across persons).
removed_raw AS (
    SELECT p_path AS srcfile, p_md5 AS md5, p_size AS size, p_id AS file_id
    FROM joined
    WHERE c_path IS NULL AND ({removal_condition})
),
-- Only contents that were both removed and added can pair up; number those alone. A content removed and added
-- more than once pairs first within a folder, then within a top folder (a person), then anywhere: in path order
-- alone, a person's file renamed with another person's copy of it removed was recorded as moved between persons.
added_pairable AS (
    SELECT a.*, regexp_replace(a.srcfile, '[^/]*$', '') AS dir, regexp_extract(a.srcfile, '^[^/]*/', 0) AS top
    FROM added_raw a SEMI JOIN removed_raw r ON a.md5 = r.md5 AND a.size = r.size WHERE a.size > 0
),
removed_pairable AS (
    SELECT r.*, regexp_replace(r.srcfile, '[^/]*$', '') AS dir, regexp_extract(r.srcfile, '^[^/]*/', 0) AS top
    FROM removed_raw r SEMI JOIN added_raw a ON a.md5 = r.md5 AND a.size = r.size WHERE r.size > 0
),
in_folder AS (
    SELECT a.srcfile, r.srcfile AS old_srcfile, r.file_id AS old_file_id
    FROM (SELECT *, row_number() OVER (PARTITION BY md5, size, dir ORDER BY srcfile) AS k FROM added_pairable) a
    JOIN (SELECT *, row_number() OVER (PARTITION BY md5, size, dir ORDER BY srcfile) AS k FROM removed_pairable) r
      ON a.md5 = r.md5 AND a.size = r.size AND a.dir = r.dir AND a.k = r.k
),
in_top AS (
    SELECT a.srcfile, r.srcfile AS old_srcfile, r.file_id AS old_file_id
    FROM (SELECT *, row_number() OVER (PARTITION BY md5, size, top ORDER BY srcfile) AS k
          FROM added_pairable ANTI JOIN in_folder USING (srcfile)) a
    JOIN (SELECT *, row_number() OVER (PARTITION BY md5, size, top ORDER BY srcfile) AS k
          FROM removed_pairable p ANTI JOIN in_folder f ON p.srcfile = f.old_srcfile) r
      ON a.md5 = r.md5 AND a.size = r.size AND a.top = r.top AND a.k = r.k
),
anywhere AS (
    SELECT a.srcfile, r.srcfile AS old_srcfile, r.file_id AS old_file_id
    FROM (SELECT *, row_number() OVER (PARTITION BY md5, size ORDER BY srcfile) AS k
          FROM added_pairable p ANTI JOIN (SELECT srcfile FROM in_folder UNION ALL SELECT srcfile FROM in_top) f
          ON p.srcfile = f.srcfile) a
    JOIN (SELECT *, row_number() OVER (PARTITION BY md5, size ORDER BY srcfile) AS k
          FROM removed_pairable p ANTI JOIN (SELECT old_srcfile FROM in_folder UNION ALL SELECT old_srcfile FROM in_top) f
          ON p.srcfile = f.old_srcfile) r
      ON a.md5 = r.md5 AND a.size = r.size AND a.k = r.k
),
renamed AS (
    SELECT * FROM in_folder UNION ALL SELECT * FROM in_top UNION ALL SELECT * FROM anywhere
)
SELECT 'renamed' AS change, srcfile, old_srcfile, old_file_id FROM renamed
UNION ALL
SELECT 'added', a.srcfile, NULL, NULL FROM added_raw a ANTI JOIN renamed n ON a.srcfile = n.srcfile
UNION ALL
SELECT 'removed', r.srcfile, NULL, r.file_id FROM removed_raw r ANTI JOIN renamed n ON r.srcfile = n.old_srcfile
UNION ALL
SELECT 'replaced', c_path, NULL, p_id FROM joined
WHERE c_path = p_path AND (c_md5 IS DISTINCT FROM p_md5 OR c_md5 IS NULL) AND NOT same_unverifiable
"""

def change_set_sql(removal_condition: str = "TRUE") -> str:
    """The query of the change set (CHANGE_SET_SCHEMA's columns) from the DuckDB tables or views `previous_files`
    (file_id, srcfile, size, mtime_ns, md5, etag) and `current_files` (the same but file_id); full mode by default."""
    return _DIFF_SQL.format(removal_condition=removal_condition)


@dataclass
class Diff:
    change_set: pl.DataFrame  # CHANGE_SET_SCHEMA, sorted by change then srcfile
    n_unchanged: int

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("added", "removed", "replaced", "renamed"), 0)
        for change, n in self.change_set.group_by("change").len().iter_rows():
            counts[change] = n
        counts["unchanged"] = self.n_unchanged
        return counts

    @property
    def is_empty(self) -> bool:
        return self.change_set.height == 0


@contextlib.contextmanager
def duckdb_session(*, threads: int = 2, memory_limit: str = "256MB",
                   spill_parent: str | Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB capped at `memory_limit`; beyond it, it spills to a new owner-only folder in
    `spill_parent` (default: the system's temporary folder), removed when the session ends (the paths
    hold person identifiers; fsutil.scratch_folder: a killed run's is removed by the next). A merge spills
    beside its shards: a shared file system with room for them."""
    with private_duckdb({"threads": max(1, threads), "memory_limit": memory_limit, "preserve_insertion_order": False},
                        spill_parent=spill_parent) as con:
        yield con


@contextlib.contextmanager
def private_duckdb(config: dict | None = None, *,
                   spill_parent: str | Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB (settings `config`) that spills, if it must, into a new owner-only folder in `spill_parent`
    (default: the system's temporary folder), removed when it closes. DuckDB's own default is `.tmp` under the working
    directory, made with the umask's modes: rows of person paths a reviewer's query spilled would lie there readable
    by others, and stay. Every in-memory DuckDB of chorus-batch is opened here (tests: test_review)."""
    from .processes import signals_deferred

    with signals_deferred():  # a signal inside DuckDB's module initialisation aborts the process
        import duckdb  # about 0.1 s to import: only where a diff has rows to compare

    with scratch_folder("chorus-duckdb-", spill_parent) as spill:
        con = duckdb.connect(config={**(config or {}), "temp_directory": str(spill)})
        try:
            yield con
        finally:
            con.close()


def compute_diff(
    previous_files: pl.DataFrame,
    current_files: pl.DataFrame,
    *,
    mode: str = "full",
    delete_list: pl.DataFrame | None = None,
    threads: int = 2,
    memory_limit: str = "256MB",
    spill_parent: str | Path | None = None,
) -> Diff:
    """previous_files: file_id, srcfile, size, mtime_ns, md5[, etag] (current rows of the last version).
    current_files: srcfile, size, mtime_ns, md5[, etag] (the tree now). delete_list: srcfile (append mode).
    Each side holds a path at most once. DuckDB works within `memory_limit` (10M-file sites within a
    node's share), spilling to a private folder in `spill_parent` (duckdb_session)."""
    if previous_files.height == 0:  # a first run (or no change at all): every path is added, nothing to join
        added = current_files.select(change=pl.lit("added"), srcfile="srcfile", old_srcfile=pl.lit(None, pl.String),
                                     old_file_id=pl.lit(None, pl.Int64))
        return Diff(added.cast(CHANGE_SET_SCHEMA).sort("srcfile"), 0)  # type: ignore[arg-type]
    with duckdb_session(threads=threads, memory_limit=memory_limit, spill_parent=spill_parent) as con:
        # string_view columns pass to DuckDB without a copy (plain Arrow strings would copy every path)
        arrow = pl.CompatLevel.newest()
        diff_columns = ("srcfile", "size", "mtime_ns", "md5", "etag")
        con.register("previous_files", _with_diff_columns(previous_files).select("file_id", *diff_columns).to_arrow(compat_level=arrow))
        con.register("current_files", _with_diff_columns(current_files).select(*diff_columns).to_arrow(compat_level=arrow))
        if mode == "full":
            condition = "TRUE"
        else:
            deletions = delete_list if delete_list is not None else pl.DataFrame(schema={"srcfile": pl.String})
            con.register("delete_list", deletions.select("srcfile").to_arrow(compat_level=arrow))
            condition = "p_path IN (SELECT srcfile FROM delete_list)"
        change_set = con.sql(change_set_sql(condition)).pl()
    change_set = change_set.cast(CHANGE_SET_SCHEMA).sort("change", "srcfile")
    # Every current path is added (or the new side of a rename), replaced, or unchanged: counting the
    # unchanged needs no second join.
    n_new_side = change_set.filter(pl.col("change").is_in(["added", "renamed", "replaced"])).height
    return Diff(change_set, current_files.height - n_new_side)


def _with_diff_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Callers comparing contents only (MD5 always known) may leave out mtime_ns and etag."""
    missing = {"mtime_ns": pl.Int64, "etag": pl.String}
    return frame.with_columns([pl.lit(None, dtype).alias(name) for name, dtype in missing.items() if name not in frame.columns])
