"""Which files a rule must look inside, and as what kind: from the paths alone (pure).

Paths are compared case-insensitively where the site layout is (folder names, extensions);
file and record names are compared exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import polars as pl

from .rules import (
    FORBIDDEN_TABLES,
    KIND_DICOM,
    KIND_EDF,
    KIND_LINKS,
    KIND_MAPPING,
    KIND_MARKDOWN,
    KIND_OMOP,
    KIND_PERSON,
    KIND_RECORDS,
    KIND_REGISTRY,
    KIND_PROCEDURES,
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


# Where a file lies (at most one place each; from the path's parts, folder names compared lower-cased).
PLACE_ROOT, PLACE_METADATA, PLACE_OMOP, PLACE_WAVEFORMS, PLACE_IMAGES = "root", "metadata", "omop", "waveforms", "images"


@dataclass(frozen=True)
class KindRule:
    """A file is of `kind` when it lies in one of `places` and its name passes every test given (the
    first rule that matches decides). Names: `name` exact; the others lower-cased (`ext`: after the last
    dot; `stem_in`: the name without its extension)."""

    kind: str
    places: tuple[str, ...]
    ext: str | None = None
    name: str | None = None
    name_in: tuple[str, ...] = ()
    suffix: str | None = None
    contains: str | None = None
    stem_in: tuple[str, ...] = ()


# The one classification of which files validation looks inside: kind_of (one path, e.g. in a hashing
# worker) and _kind_expr (polars, over the whole site) are both built from it.
KIND_RULES: tuple[KindRule, ...] = (
    KindRule(KIND_WFDB, (PLACE_WAVEFORMS,), ext="hea"),
    KindRule(KIND_EDF, (PLACE_WAVEFORMS,), ext="edf"),
    KindRule(KIND_EDF, (PLACE_WAVEFORMS,), ext="bdf"),
    KindRule(KIND_RECORDS, (PLACE_WAVEFORMS, PLACE_ROOT), name="RECORDS"),
    KindRule(KIND_MARKDOWN, (PLACE_METADATA,), name_in=("readiness.md", "submission.md")),
    # SUBMISSION.md at the root: Waveform File Format v2.0's place (still read, layout.superseded); no edition put
    # READINESS.md there (v2.1: "directly under the Metadata folder"), so one at the root is not read as the checklist
    KindRule(KIND_MARKDOWN, (PLACE_ROOT,), name_in=("submission.md",)),
    KindRule(KIND_MAPPING, (PLACE_METADATA,), suffix="_mapping.csv"),
    KindRule(KIND_REGISTRY, (PLACE_METADATA, PLACE_ROOT), contains="registry", ext="csv"),
    KindRule(KIND_DICOM, (PLACE_IMAGES,), ext="dcm"),
    KindRule(KIND_PERSON, (PLACE_OMOP,), ext="csv", stem_in=("person",)),
    KindRule(KIND_VISITS, (PLACE_OMOP,), ext="csv", stem_in=("visit_occurrence",)),
    KindRule(KIND_PROCEDURES, (PLACE_OMOP,), ext="csv", stem_in=("procedure_occurrence",)),
    KindRule(KIND_LINKS, (PLACE_OMOP,), ext="csv", stem_in=(LINKS_TABLE,)),
    KindRule(KIND_OMOP, (PLACE_OMOP,), ext="csv", stem_in=(*OMOP_KEYS, *FORBIDDEN_TABLES)),
)


def _place(parts: list[str]) -> str | None:
    n = len(parts)
    if n == 1:
        return PLACE_ROOT
    top = parts[0].lower()
    if top in ("omop", "metadata"):
        return top if n == 2 else None
    if n >= 3:
        second = parts[1].lower()
        if second in (PLACE_WAVEFORMS, PLACE_IMAGES):
            return second
    return None


def kind_of(srcfile: str) -> str | None:
    """The kind of header facts validation needs of one file, from its site-relative path alone; None: none."""
    parts = srcfile.split("/")
    place = _place(parts)
    if place is None:
        return None
    name = parts[-1]
    name_l = name.lower()
    dot = name_l.rfind(".")
    ext, stem = (name_l[dot + 1:], name_l[:dot]) if dot >= 0 else (None, name_l)
    for rule in KIND_RULES:
        if (place in rule.places
                and (rule.ext is None or ext == rule.ext)
                and (rule.name is None or name == rule.name)
                and (not rule.name_in or name_l in rule.name_in)
                and (rule.suffix is None or name_l.endswith(rule.suffix))
                and (rule.contains is None or rule.contains in name_l)
                and (not rule.stem_in or stem in rule.stem_in)):
            return rule.kind
    return None


def _place_expr() -> pl.Expr:
    n, top, second = pl.col("_n"), pl.col("_top_l"), pl.col("_second_l")
    in_person = (n >= 3) & ~top.is_in(["omop", "metadata"])
    return (
        pl.when(n == 1).then(pl.lit(PLACE_ROOT))
        .when((top == "metadata") & (n == 2)).then(pl.lit(PLACE_METADATA))
        .when((top == "omop") & (n == 2)).then(pl.lit(PLACE_OMOP))
        .when(in_person & second.is_in([PLACE_WAVEFORMS, PLACE_IMAGES])).then(second)
        .otherwise(pl.lit(None, pl.String))
    )


def _rule_expr(rule: KindRule, place: pl.Expr) -> pl.Expr:
    name_l = pl.col("_name").str.to_lowercase()
    ext = pl.col("_ext_l")
    stem_l = pl.when(ext.is_null()).then(name_l).otherwise(name_l.str.head(name_l.str.len_chars() - ext.str.len_chars() - 1))
    tests = [place.is_in(list(rule.places))]
    if rule.ext is not None:
        tests.append(ext == rule.ext)
    if rule.name is not None:
        tests.append(pl.col("_name") == rule.name)
    if rule.name_in:
        tests.append(name_l.is_in(list(rule.name_in)))
    if rule.suffix is not None:
        tests.append(name_l.str.ends_with(rule.suffix))
    if rule.contains is not None:
        tests.append(name_l.str.contains(rule.contains, literal=True))
    if rule.stem_in:
        tests.append(stem_l.is_in(list(rule.stem_in)))
    return pl.all_horizontal(tests).fill_null(False)


@functools.cache  # built once: ~200 expressions, 2 ms of CPU a call (9.5 -> 7.5 ms per kinds_in of 5,000 paths), and
# the hashing stage classifies each batch it is given
def _kind_expr() -> pl.Expr:
    """kind_of over _path_columns' helper columns."""
    place = _place_expr()
    expr = pl.when(_rule_expr(KIND_RULES[0], place)).then(pl.lit(KIND_RULES[0].kind))
    for rule in KIND_RULES[1:]:
        expr = expr.when(_rule_expr(rule, place)).then(pl.lit(rule.kind))
    return expr.otherwise(pl.lit(None, pl.String)).alias("kind")


# The places where a name's kind depends only on its extension and on whether it is one of the exact names
# (KindRule.ext, .name): derived from KIND_RULES, so that a rule testing more of the name there drops its place.
_EXT_PLACES = [place for place in (PLACE_ROOT, PLACE_METADATA, PLACE_OMOP, PLACE_WAVEFORMS, PLACE_IMAGES)
               if all(not (rule.name_in or rule.suffix or rule.contains or rule.stem_in)
                      for rule in KIND_RULES if place in rule.places)]
_EXACT_NAMES = sorted({rule.name for rule in KIND_RULES if rule.name})


def kinds_in(srcfile: pl.Series) -> frozenset[str]:
    """The kinds among these paths (kind_of of each): kind_of of one path of each class that decides a kind, its
    place and, in _EXT_PLACES, its lower-cased extension and exact name, elsewhere the whole path. The hashing
    stage asks this of each batch of a first run's files; classifying every path (_kind_expr) cost 3x the CPU."""
    src, parts = pl.col("srcfile"), pl.col("_parts")
    named = pl.any_horizontal([(src == name) | src.str.ends_with("/" + name) for name in _EXACT_NAMES])
    ext_l = src.str.extract(r"\.([^./]*)$").str.to_lowercase().fill_null("/")  # ("/": none, not an empty one)
    tail = pl.when(pl.col("_place").is_in(_EXT_PLACES)).then(pl.concat_str(ext_l, named.cast(pl.String))).otherwise(src)
    first = (
        pl.DataFrame({"srcfile": srcfile}).lazy()
        .with_columns(_parts=src.str.splitn("/", 3))
        .with_columns(  # (_place_expr asks only whether there are 1, 2 or more parts)
            _n=pl.when(parts.struct.field("field_1").is_null()).then(1)
            .when(parts.struct.field("field_2").is_null()).then(2).otherwise(3),
            _top_l=parts.struct.field("field_0").str.to_lowercase(),
            _second_l=parts.struct.field("field_1").str.to_lowercase())
        .select("srcfile", _place=_place_expr())
        .filter(pl.col("_place").is_not_null())
        .select("srcfile", "_place", _tail=tail)
        .unique(["_place", "_tail"])
        .collect()["srcfile"]
    )
    return frozenset(kind for path in first.to_list() if (kind := kind_of(path)) is not None)


# Paths are classified this many at a time: the path columns of all at once cost more than the result
# (1M paths: +270 MB at the peak for a 100 MB result).
_SLICE_ROWS = 131_072


def with_kind(current: pl.DataFrame) -> pl.DataFrame:
    """`current` with `kind` (kind_of of each srcfile; None: no rule looks inside it). From the few path columns the
    classification reads, not all of _path_columns: a check classifies every file once, here, and _Site keeps the
    kind it is given (each classified every file again: 100k files, 0.03 s of CPU of the check's 1.6 s)."""
    def classified(rows: pl.DataFrame) -> pl.DataFrame:
        parts, name = pl.col("_parts"), pl.col("_name")
        return (
            rows.lazy()
            .with_columns(_parts=pl.col("srcfile").str.split("/"))
            .with_columns(_n=parts.list.len(), _top_l=parts.list.first().str.to_lowercase(),
                          _second_l=parts.list.get(1, null_on_oob=True).str.to_lowercase(), _name=parts.list.last())
            .with_columns(_ext_l=name.str.extract(r"\.([^.]*)$").str.to_lowercase())
            .with_columns(_kind_expr())
            .select(*rows.columns, "kind")
            .collect()
        )

    return pl.concat([classified(rows) for rows in current.iter_slices(_SLICE_ROWS)]) if current.height else \
        classified(current)


def facts_needed(current: pl.DataFrame, *, keep: tuple[str, ...] = ()) -> pl.DataFrame:
    """Rows (srcfile, md5, kind, *keep) of the files whose header facts a rule needs; kind from the name (a `kind`
    column of `current`, with_kind's, where it has one)."""
    def needed(rows: pl.DataFrame) -> pl.DataFrame:
        return (
            (rows if "kind" in rows.columns else with_kind(rows.select("srcfile", "md5", *keep))).lazy()
            .filter(pl.col("kind").is_not_null() & pl.col("md5").is_not_null())
            .select("srcfile", "md5", "kind", *keep)
            .collect()
        )

    return pl.concat([needed(rows) for rows in current.iter_slices(_SLICE_ROWS)]) if current.height else needed(current)
