"""Which files a rule must look inside, and as what kind: from the paths alone (pure).

Paths are compared case-insensitively where the site layout is (folder names, extensions);
file and record names are compared exactly.
"""

from __future__ import annotations

import polars as pl

from .rules import (
    FORBIDDEN_TABLES,
    KIND_DICOM,
    KIND_LINKS,
    KIND_MAPPING,
    KIND_MARKDOWN,
    KIND_OMOP,
    KIND_PERSON,
    KIND_RECORDS,
    KIND_REGISTRY,
    KIND_VISITS,
    KIND_WFDB,
    LINKS_TABLE,
    OMOP_KEYS,
)


def _path_columns(current: pl.DataFrame) -> pl.LazyFrame:
    """Helper columns from srcfile: the parts of the path, lower-cased where the layout is.
    (Cheap string functions where possible: this runs over every file of the site.)"""
    parts, name, ext = pl.col("_parts"), pl.col("_name"), pl.col("_ext_l")
    return (
        current.lazy()
        .with_columns(_parts=pl.col("srcfile").str.split("/"))
        .with_columns(
            _n=parts.list.len(),
            _top=parts.list.first(),
            _second=parts.list.get(1, null_on_oob=True),
            _third=parts.list.get(2, null_on_oob=True),
            _name=parts.list.last(),
        )
        .with_columns(
            _dir=pl.col("srcfile").str.head(
                (pl.col("srcfile").str.len_chars() - name.str.len_chars() - 1).clip(lower_bound=0)),
            _top_l=pl.col("_top").str.to_lowercase(),
            _second_l=pl.col("_second").str.to_lowercase(),
            _ext_l=name.str.extract(r"\.([^.]*)$").str.to_lowercase(),
        )
        .with_columns(
            _stem=pl.when(ext.is_null()).then(name).otherwise(
                name.str.head(name.str.len_chars() - ext.str.len_chars() - 1)),
            _table=pl.when((ext == "csv") & (pl.col("_top_l") == "omop")).then(
                name.str.to_lowercase().str.strip_suffix(".csv")),
        )
        .drop("_parts")
    )


def _kind_expr() -> pl.Expr:
    in_person = (pl.col("_n") >= 3) & ~pl.col("_top_l").is_in(["omop", "metadata"])
    waveforms = in_person & (pl.col("_second_l") == "waveforms")
    table = pl.col("_table")
    omop = (pl.col("_top_l") == "omop") & (pl.col("_n") == 2)
    name_l = pl.col("_name").str.to_lowercase()
    metadata = (pl.col("_top_l") == "metadata") & (pl.col("_n") == 2)
    at_root = pl.col("_n") == 1
    return (
        pl.when(waveforms & (pl.col("_ext_l") == "hea")).then(pl.lit(KIND_WFDB))
        .when((waveforms | at_root) & (pl.col("_name") == "RECORDS")).then(pl.lit(KIND_RECORDS))
        .when((metadata | at_root) & name_l.is_in(["readiness.md", "submission.md"])).then(pl.lit(KIND_MARKDOWN))
        .when(metadata & name_l.str.ends_with("_mapping.csv")).then(pl.lit(KIND_MAPPING))
        .when((metadata | at_root) & name_l.str.contains("registry") & (pl.col("_ext_l") == "csv"))
        .then(pl.lit(KIND_REGISTRY))
        .when(in_person & (pl.col("_second_l") == "images") & (pl.col("_ext_l") == "dcm")).then(pl.lit(KIND_DICOM))
        .when(omop & (table == "person")).then(pl.lit(KIND_PERSON))
        .when(omop & (table == "visit_occurrence")).then(pl.lit(KIND_VISITS))
        .when(omop & (table == LINKS_TABLE)).then(pl.lit(KIND_LINKS))
        .when(omop & table.is_in([*OMOP_KEYS, *FORBIDDEN_TABLES])).then(pl.lit(KIND_OMOP))
        .otherwise(pl.lit(None, pl.String))
        .alias("kind")
    )


def facts_needed(current: pl.DataFrame) -> pl.DataFrame:
    """Rows (srcfile, md5, kind) of the files whose header facts a rule needs; kind from the name."""
    return (
        _path_columns(current.select("srcfile", "md5"))
        .with_columns(_kind_expr())
        .filter(pl.col("kind").is_not_null() & pl.col("md5").is_not_null())
        .select("srcfile", "md5", "kind")
        .collect()
    )
