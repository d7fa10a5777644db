"""The frame schemas passed between pipeline stages.

scan -> LISTING, classify adds CLASSIFIED_COLUMNS, hash adds md5, diff emits a
CHANGE_SET. Keeping them in one place is what lets a cloud source, a Slurm shard
or a Parquet snapshot plug into the same stages.
"""

from __future__ import annotations

import pyarrow as pa
import polars as pl

# One row per file found by a source. srcfile is the site-relative POSIX path.
LISTING_SCHEMA = pa.schema(
    [
        ("srcfile", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
    ]
)

# Problems found while listing, hashing or parsing; one row each.
ERRORS_SCHEMA = {"srcfile": pl.String, "kind": pl.String, "message": pl.String}

# Added by classify, from the path alone.
CLASSIFIED_SCHEMA = {
    "modality": pl.String,
    "person_id": pl.String,
    "session_id": pl.String,
    "start_date": pl.String,  # YYYY-MM-DD
    "start_time": pl.String,  # HH:MM:SS
    "duration_s": pl.Float64,
    "segment": pl.String,
    "parse_error": pl.String,  # why the path fits no pattern; NULL when it does
}

# The current rows of the previous version, as the pipeline needs them.
STATE_SCHEMA = {
    "file_id": pl.Int64,
    "srcfile": pl.String,
    "size": pl.Int64,
    "mtime_ns": pl.Int64,
    "md5": pl.String,
    "record_id": pl.Int64,
    "modality": pl.String,
    "person_id": pl.String,
    "parse_error": pl.String,
}

# One finding of `validate`: severity error | warning | info, the rule's id, where, and what to fix.
FINDINGS_SCHEMA = {"severity": pl.String, "rule": pl.String, "srcfile": pl.String, "message": pl.String}
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}  # most serious first, wherever findings are listed


def empty_errors() -> pl.DataFrame:
    return pl.DataFrame(schema=ERRORS_SCHEMA)


def empty_state() -> pl.DataFrame:
    return pl.DataFrame(schema=STATE_SCHEMA)
