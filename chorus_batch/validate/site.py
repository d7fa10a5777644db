"""What the rules look at: the current files with their path columns, person folders and decoded
facts (`_Site`), and the helpers every rule uses to state a finding.

Paths are compared case-insensitively where the site layout is (folder names,
extensions); file and record names are compared exactly. Person and visit ids
made only of digits are compared as numbers ("000123" = "123"), since OMOP
stores them as integers while folders keep the site's text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from ..classify import COMPRESSED_NAME, LOCAL_ONLY_NAME
from ..frames import fmt, has_zone, shown, visit_moment
from ..partitions import top_folder
from .kinds import KIND_RULES, PLACE_METADATA, PLACE_OMOP, PLACE_ROOT, _kind_expr, _path_columns
from .readers import _DICOM_TAGS, JOINED, OWN_REMEDY
from .rules import (
    AS_NUMBER,
    KIND_DICOM,
    KIND_EDF,
    KIND_LINKS,
    KIND_MAPPING,
    KIND_MARKDOWN,
    KIND_OMOP,
    KIND_PERSON,
    KIND_PROCEDURES,
    KIND_RECORDS,
    KIND_REGISTRY,
    KIND_VISITS,
    KIND_WFDB,
)


# ----------------------------------------------------------------------------- decoding facts

_CSV_DTYPE = {"error": pl.String, "columns": pl.List(pl.String), "delimiter": pl.String}
_FACT_DTYPES_OF: dict[str, pl.Struct] = {
    KIND_WFDB: pl.Struct({
        "error": pl.String, "record_name": pl.String, "record_name_written": pl.String, "n_sig": pl.Int64, "sig_len": pl.Int64, "fs": pl.Float64,
        "base_date": pl.String, "base_time": pl.String,  # ISO; wfdb.name_mismatch (kept by every wfdb_header since v6)
        "signals": pl.List(pl.Struct({"file_name": pl.String, "fmt": pl.String,
                                      "samps_per_frame": pl.Int64, "byte_offset": pl.Int64,
                                      "sig_name": pl.String, "units": pl.String, "units_written": pl.String,
                                      "file_name_written": pl.String})),
        "segments": pl.List(pl.Struct({"name": pl.String, "length": pl.Int64, "name_written": pl.String})),
        "bare_cr": pl.Boolean,  # lines ended by a carriage return alone (wfdb_header since v11: wfdb.line_ends)
    }),
    KIND_DICOM: pl.Struct({"error": pl.String, **{key: pl.String for key in _DICOM_TAGS}, "lacking": pl.List(pl.String),
                           "unknown_transfer_syntax": pl.String}),
    KIND_RECORDS: pl.Struct({"error": pl.String, "records": pl.List(pl.String)}),
    KIND_EDF: pl.Struct({"error": pl.String, "start_date": pl.String, "start_time": pl.String,
                         "duration_s": pl.Float64, "edf_plus": pl.Boolean, "records": pl.Int64,
                         "implied_size": pl.Int64,
                         "signals": pl.List(pl.Struct({"label": pl.String, "units": pl.String, "fs": pl.Float64}))}),
    KIND_OMOP: pl.Struct(_CSV_DTYPE),
    # (person_id: one text of the ids, readers._joined_text; split where decoded, _with_facts)
    KIND_PERSON: pl.Struct({**_CSV_DTYPE, "person_id": pl.String, "person_id_list": pl.List(pl.String),
                            "repeated_person_id": pl.List(pl.String),
                            "n_repeated_person_id": pl.Int64}),
    # (each column one text of its values: readers._csv_joined; split where read, not decoded as a list)
    KIND_VISITS: pl.Struct({**_CSV_DTYPE, "visit_occurrence_id": pl.String, "person_id": pl.String,
                            "visit_start": pl.String, "visit_end": pl.String,
                            "bad_dates": pl.List(pl.String), "n_bad_dates": pl.Int64,
                            "reversed_visits": pl.List(pl.String), "n_reversed_visits": pl.Int64,
                            "repeated_visit_id": pl.List(pl.String), "n_repeated_visit_id": pl.Int64}),
    KIND_LINKS: pl.Struct({**_CSV_DTYPE, "visit_occurrence_id": pl.List(pl.String), "session": pl.List(pl.String)}),
    KIND_MARKDOWN: pl.Struct({"error": pl.String, "headings": pl.List(pl.String), "checked": pl.Int64,
                              "unchecked": pl.List(pl.String), "chars": pl.Int64, "variables": pl.Int64,
                              "variable_gaps": pl.List(pl.String), "n_variable_gaps": pl.Int64,
                              "sample_edges": pl.Boolean}),
    KIND_MAPPING: pl.Struct({**_CSV_DTYPE, "rows": pl.Int64, "no_id": pl.Int64, "bad_rate": pl.Int64,
                             "bad_label": pl.Int64, "no_units": pl.Int64, "no_time": pl.Int64,
                             "examples": pl.List(pl.String),
                             "signals": pl.List(pl.Struct({"signal_id": pl.String, "sampling_rate": pl.Float64,
                                                           "units": pl.String}))}),
    KIND_REGISTRY: pl.Struct({**_CSV_DTYPE, "rows": pl.Int64, "duplicate_files": pl.List(pl.String),
                              "n_duplicate_files": pl.Int64, "n_duplicate_ids": pl.Int64,
                              "duplicate_ids": pl.List(pl.String), "no_src": pl.Int64,
                              "no_trg": pl.Int64, "no_file": pl.Int64, "no_proc": pl.Int64, "bad_proc": pl.Int64, "no_person": pl.Int64,
                              "bad_person": pl.Int64, "no_group": pl.Int64, "bad_visit": pl.Int64,
                              "visit_persons": pl.List(pl.List(pl.String)), "visit_times": pl.List(pl.List(pl.String)), "unvisited_times": pl.List(pl.List(pl.String)),
                              "no_datetime": pl.Int64, "bad_datetime": pl.Int64,
                              "bad_rows": pl.List(pl.String), "n_bad_rows": pl.Int64, "n_other_person": pl.Int64,
                              "other_person_rows": pl.List(pl.String), "n_header_rows": pl.Int64, "header_rows": pl.List(pl.String),
                              "person_id": pl.List(pl.String), "visit_id": pl.List(pl.String),
                              "trg_file": pl.List(pl.String), "proc_ids": pl.List(pl.Int64),
                              "n_proc_persons": pl.Int64, "proc_persons": pl.List(pl.String),
                              "proc_person_pairs": pl.List(pl.List(pl.String)),
                              "proc_visit_pairs": pl.List(pl.List(pl.String)),
                              "blank_trg_persons": pl.List(pl.List(pl.String)),
                              "no_registry_id": pl.Int64, "bad_registry_id": pl.Int64, "dup_registry_id": pl.Int64,
                              "registry_id_rows": pl.List(pl.String), "n_registry_id_rows": pl.Int64,
                              "unordered_registry_id": pl.Int64,
                              "unordered_registry_rows": pl.List(pl.String)}),
    KIND_PROCEDURES: pl.Struct({**_CSV_DTYPE, "ehr_runs": pl.List(pl.List(pl.Int64)), "runs": pl.List(pl.List(pl.Int64)),
                                "image_runs": pl.List(pl.List(pl.Int64)),
                                "waveform_runs": pl.List(pl.List(pl.Int64)),
                                "linkage_persons": pl.List(pl.List(pl.String)),
                                "linkage_visits": pl.List(pl.List(pl.String))}),
}
# Every kind's facts may instead say that the file could not be read ({"error", "retry": true}; never cached).
_FACT_DTYPES = {kind: pl.Struct({**dtype.to_schema(), "retry": pl.Boolean}) for kind, dtype in _FACT_DTYPES_OF.items()}


# What rules need of a file beside its facts (a narrow frame: a million DICOM rows are copied cheaply).
_FILE_COLUMNS = ("srcfile", "md5", "size", "_n", "_top", "_second", "_third", "_dir", "_name", "_stem", "_table",
                 "kind", "_modality", "_category", "_session", "_segment", "_layout")


EMPTY_READ = "the file is empty (0 bytes), likely an interrupted copy: copy it again"

# Facts are decoded this many at a time, the slices side by side: all at once, the JSON parser holds a copy of
# every text (150k WFDB headers: +230 MB at the peak, against +90 MB in slices; as fast, 0.24 s).
_DECODE_ROWS = 16_384
_LARGE_FACTS_BYTES = 1 << 20  # a table's values, not a header's: decoded by Python's json (_with_facts)
# A plan over a part of fewer files is collected by polars' in-memory engine, not the streaming one its "auto" picks:
# the streaming engine's set-up cost about twice the CPU on a small part (a part's findings of a 59-file site,
# ~35 frames with joins: 0.029 -> 0.017 CPU-s), where memory is no concern; larger parts keep "auto".
_IN_MEMORY_ROWS = 20_000


def collected(frame: pl.LazyFrame, rows: int) -> pl.DataFrame:
    """`frame` collected, by the in-memory engine where the part it reads has fewer than _IN_MEMORY_ROWS files."""
    return frame.collect(engine="in-memory") if rows < _IN_MEMORY_ROWS else frame.collect()


def _with_facts(files: pl.DataFrame, facts: pl.DataFrame, kind: str) -> pl.DataFrame:
    """The files of one kind with their decoded facts; `_known` is false where none were extracted.

    Joined on a 64-bit hash of the MD5 (then checked on the MD5 itself): a million-row
    join on integers costs a fraction of one on 32-character strings. One lazy plan: the join's
    output is filtered as it is made, not copied whole first.
    """
    rows = files.lazy().filter(pl.col("kind") == kind).select(_FILE_COLUMNS).with_columns(_h=pl.col("md5").hash())
    of_kind = facts.filter(pl.col("kind") == kind).select("md5", "facts")

    def decode(part: pl.DataFrame) -> pl.LazyFrame:
        return part.lazy().select(pl.col("md5").alias("_md5"), pl.col("md5").hash().alias("_h"),
                                  pl.col("facts").str.json_decode(_FACT_DTYPES[kind]).alias("_f"))

    def decode_large(part: pl.DataFrame) -> pl.LazyFrame:
        # a few large texts (a visit_occurrence.csv of 6M rows: 100 MB): polars' decoder held +540 MiB for 6.1 s,
        # Python's json +265 MiB for 1.4 s
        values = pl.Series("_f", [json.loads(text) for text in part["facts"]], dtype=_FACT_DTYPES[kind], strict=False)
        return part.lazy().select(pl.col("md5").alias("_md5"), pl.col("md5").hash().alias("_h"), values)

    large = pl.col("facts").str.len_bytes() > _LARGE_FACTS_BYTES
    if of_kind.select(large.any()).item():
        parts = [(decode_large if big else decode)(part) for big, frame in ((True, of_kind.filter(large)),
                                                                           (False, of_kind.filter(~large)))
                 for part in frame.iter_slices(_DECODE_ROWS)]
    else:  # (headers: no large text, nor two filters to make, each ~0.1 ms of CPU, 12 kinds in every part)
        parts = [decode(part) for part in of_kind.iter_slices(_DECODE_ROWS)]
    decoded = pl.concat(parts) if parts else decode(of_kind)
    if kind == KIND_PERSON:  # the ids as a list, as rules read them (omop_person.v9 keeps them as one text)
        decoded = decoded.with_columns(pl.col("_f").struct.with_fields(
            person_id=pl.coalesce(pl.field("person_id_list"),
                                  pl.when(pl.field("person_id") == "").then(pl.lit([], pl.List(pl.String)))
                                  .otherwise(pl.field("person_id").str.split(JOINED)))))
    # A read that failed (not the content: see readers.read_facts) says nothing of the content: the kind's rules
    # see no facts, file.unread says what happened (a content rule would say "re-export it").
    unread = pl.col("retry").fill_null(False)
    # An empty file is its kind's one finding (not file.empty too, with another remedy): said with the likely cause
    empty = pl.when(pl.col("size") == 0).then(pl.lit(EMPTY_READ)).otherwise(pl.col("error"))
    return collected(
        rows.join(decoded.unnest("_f").with_columns(_known=pl.lit(True)), on="_h", how="left")
        .filter(pl.col("_md5").is_null() | (pl.col("_md5") == pl.col("md5")))
        .with_columns(pl.col("_known").fill_null(False))
        .with_columns(
            _unread=pl.when(unread).then(pl.col("error")),
            _known=pl.col("_known") & ~unread,
            error=pl.when(~unread).then(empty),
        ).with_columns(_ok=pl.col("_known") & pl.col("error").is_null()).drop("_h", "_md5", "retry"),
        files.height)


# ----------------------------------------------------------------------------- the site and its findings


def _joined(column: str, first: str = "visit_occurrence_id") -> pl.Expr:
    """A column the facts keep as one text of its values (readers._csv_joined), as the list of them: none where the
    first column's text is empty (no row; an empty text of another column is one row's empty value)."""
    return (pl.when(pl.col(first) == "").then(pl.lit([], pl.List(pl.String)))
            .otherwise(pl.col(column).str.split(JOINED)).alias(column))


def _norm_id(expr: pl.Expr) -> pl.Expr:
    """Ids compared as OMOP stores them: digits-only ids without their leading zeros."""
    s = expr.str.strip_chars().str.strip_chars('"')
    # (the leading zeros stripped, one kept of an id of zeros alone: what replace(r"^0+([0-9])", "${1}") made of the
    # digits, without a regex: 5 columns of a part's 16,690 DICOM headers, 19 -> 14.5 ms of CPU. `bare` is the first
    # `then`: the result keeps the name of `expr`)
    bare = s.str.strip_chars_start("0")
    return pl.when(s.str.contains(r"^[0-9]+$")).then(pl.when(bare != "").then(bare).otherwise(pl.lit("0"))).otherwise(s)


_SCIENTIFIC = r"[eE]"


def _as_integer(expr: pl.Expr) -> pl.Expr:
    """An id as _norm_id compares it, one written as AS_NUMBER taken as the integer it is (a scientific notation
    whose value is no integer, or past 2^53, stays as written: its digits are lost)."""
    text = expr.str.strip_chars()
    value = text.cast(pl.Float64, strict=False)
    scientific = text.str.contains(AS_NUMBER) & text.str.contains(_SCIENTIFIC)
    whole = pl.when(scientific & (value == value.floor()) & (value < 2.0 ** 53)).then(
        value.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(expr)
    return _norm_id(whole.str.replace(r"^(\s*[0-9]+)\.0*(\s*)$", "${1}${2}"))


def _written_as(written: pl.Expr) -> pl.Expr:
    """How an id of AS_NUMBER is written, in words: "as a decimal (...)" or "in scientific notation (...)"."""
    return (pl.when(written.str.contains(_SCIENTIFIC))
            .then(pl.lit("in scientific notation (as a spreadsheet writes a large number, keeping 15 digits: re-export "
                         "from the database, not through a spreadsheet)"))
            .otherwise(pl.lit("as a decimal (as pandas writes an integer column with empty cells)")))


_FINDING_COLUMNS = {"rule": pl.String, "srcfile": pl.String, "message": pl.String}


# The finding frame of a rule whose rows are known to be none (an eager frame of no row): check() leaves it out of the
# plans it collects. Most rules find nothing on most sites; each such frame in a plan cost ~0.6 ms of CPU to collect,
# 98 of the 141 rule frames of a clean site of 59 files (a third of a check's fixed cost, which every part pays).
NOTHING = pl.LazyFrame(schema=_FINDING_COLUMNS)


def modalities_held(current: pl.DataFrame) -> dict[str, bool]:
    """_Site.holds of the whole site, from the paths alone: a file in <top>/Waveforms/ (Images/), the top folder not
    OMOP/ or Metadata/, is a `_waveforms` (`_images`) file, as its own folder is then a person's (_has_data)."""
    second = pl.col("srcfile").str.extract(r"^[^/]+/([^/]+)/", 1).str.to_lowercase()
    top = pl.col("srcfile").str.extract(r"^([^/]+)/", 1).str.to_lowercase()
    person = ~top.is_in(["omop", "metadata"])
    row = current.lazy().select(Waveforms=((second == "waveforms") & person).any(),
                                Images=((second == "images") & person).any()).collect()
    return {name: bool(row[name].item()) for name in row.columns}


def _found(rule: str, frame: pl.DataFrame | pl.LazyFrame, srcfile: pl.Expr | str, message: pl.Expr) -> pl.LazyFrame:
    if isinstance(frame, pl.DataFrame) and frame.height == 0:
        return NOTHING
    srcfile_expr = pl.col(srcfile) if isinstance(srcfile, str) else srcfile
    return frame.lazy().select(pl.lit(rule).alias("rule"), srcfile_expr.alias("srcfile"), message.alias("message"))


def _one(rule: str, srcfile: str, message: str) -> pl.LazyFrame:
    return pl.LazyFrame({"rule": [rule], "srcfile": [srcfile], "message": [message]}, schema=_FINDING_COLUMNS)


def _unreadable(what: str, remedy: str) -> pl.Expr:
    """The message of a file whose reader gave up (its `error` fact): what it is, why, and what to do, the remedy
    given once: the reader's own where its reason has one (readers.OWN_REMEDY), else `remedy`. (Facts cached before
    2026-12-04 prefix a mapping's or registry's reason with "cannot read the <kind>: ", the finding's own words.)"""
    error = pl.col("error").str.replace(r"^cannot read the (mapping file|registry): ", "")
    return pl.when(error.str.contains(OWN_REMEDY)).then(fmt(f"cannot read this {what}: {{}}", error)).otherwise(
        fmt(f"cannot read this {what}: {{}}; {remedy}", error))


# What a finding names of a group its file belongs to (the person folders a content lies under, the recordings that use
# a session id): its first few members and how many there are. Each member row carried the whole group's list: one
# content under 1,000 person folders, 100 files in each, made 10^8 list items (1.8 GB at 100k files), and the same
# file in every person folder of a 1M-file site took 24 GB (the run was killed by the out-of-memory killer).
LISTED = 5


def _join_list(values: pl.Expr, limit: int = LISTED) -> pl.Expr:
    return values.list.head(limit).list.join(", ")


def _first_of(values: pl.Expr) -> pl.Expr:
    """(in a group_by's agg) the group's first LISTED distinct values, sorted."""
    return values.unique().sort().head(LISTED)


def _counted_list(values: pl.Expr, n: pl.Expr) -> pl.Expr:
    """`values` (_first_of's) joined, each as units.shown_name shows it (frames.shown), with how many more of the `n`
    there are ("a, b, c, d, e and 995 more")."""
    return pl.concat_str(values.list.eval(shown(pl.element())).list.join(", "),
                         pl.when(n > LISTED).then(fmt(" and {} more", n - LISTED)).otherwise(pl.lit("")))


# Kinds found only in the files every part holds (OMOP/, Metadata/, the root): decoded once, not once per part.
SHARED_KINDS = frozenset(rule.kind for rule in KIND_RULES
                         if set(rule.places) <= {PLACE_ROOT, PLACE_OMOP, PLACE_METADATA})


def shared_files(srcfile: pl.Expr) -> pl.Expr:
    """The files every part of a check holds: OMOP/, Metadata/ and the site's root (the files the rules of
    every person folder read: person.csv, visit_occurrence.csv, the registries, a RECORDS at the root)."""
    top = top_folder(srcfile)
    return top.is_null() | top.str.to_lowercase().is_in(["omop", "metadata"])


@dataclass
class _Across:
    """What the rules that look across person folders gather from each part of a check, for checks.py to
    conclude on once every part is done (one row per folder or session: small beside the files)."""

    folders: list[pl.DataFrame] = field(default_factory=list)  # _Site.folders: _top, _key, _is_person, ...
    sessions: list[pl.DataFrame] = field(default_factory=list)  # _top, category, session_id, _dir of today's layout
    session_ids: list[pl.DataFrame] = field(default_factory=list)  # session_id of every waveform file that has one
    records_found: list[pl.DataFrame] = field(default_factory=list)  # srcfile, _entry: a root RECORDS entry found
    accessions: list[pl.DataFrame] = field(default_factory=list)  # _top, _session, _folder, _key of today's layout
    sop_uids: list[pl.DataFrame] = field(default_factory=list)  # _top, _dir, _uids: a series folder's SOPInstanceUID hashes


FactsOf = Callable[[pl.DataFrame], pl.DataFrame]  # (kind, md5) rows wanted -> their FACTS_SCHEMA rows

# The kinds of a run's recorded problems whose path is there on the site though the run took no file of it (a file
# this user may not read, one written while hashed, a link not followed, a FIFO, a folder it could not list): a rule
# that looks for that path (or one below it) among the version's files says so, never "add it" (a vanished file is
# gone: not among them).
UNTAKEN_KINDS = ("unreadable", "changed_while_hashing", "special_file", "symlink", "symlink_inside", "broken_symlink",
                 "unreadable_link", "unreadable_dir", "mount_loop", "mount_inside")


def untaken(errors: pl.DataFrame) -> dict[str, str]:
    """The paths of a run's recorded problems (srcfile, kind, message) that are there but in no version, by path
    (a folder's without its trailing /; the site root's is ''): the message."""
    seen = errors.filter(pl.col("kind").is_in(UNTAKEN_KINDS))
    return {path.rstrip("/"): why for path, why in reversed(seen.select("srcfile", "message").rows())}


def why_untaken(untaken: dict[str, str], path: str) -> str | None:
    """Why a path a rule looked for and did not find among the version's files may be there all the same (the
    clause after the path), or None: not seen by the run."""
    if not untaken:
        return None
    if path in untaken:
        return f"is there but the scan could not take it ({untaken[path]})"
    parts = path.split("/")
    for k in range(len(parts) - 1, 0, -1):
        folder = "/".join(parts[:k])
        if folder in untaken:
            return f"may be there: the scan could not list or follow {folder}/ ({untaken[folder]})"
    return None


def _there_untaken(what: pl.Expr) -> pl.Expr:
    """The message of a file a rule looked for that the run saw, or may not have seen, but took no file of (`_why`,
    _Site.with_untaken)."""
    return fmt("{} {}, so it is in no version and no rule read it: fix that and run again", what, pl.col("_why"))


class _Site:
    """The current files of one part of a check with path helper columns, person-folder facts and decoded
    facts. `facts_of(wanted)`: the facts of the (kind, md5) rows wanted (read kind by kind, as a rule asks);
    `shared`: the decoded SHARED_KINDS of another part (the same files in every part), filled as they are decoded."""

    def __init__(self, current: pl.DataFrame, facts_of: FactsOf | pl.DataFrame,
                 shared: dict[str, pl.DataFrame] | None = None, untaken: dict[str, str] | None = None,
                 held: dict[str, bool] | None = None):
        # whether the whole site holds Waveforms/ and Images/ files (modalities_held), where this is one part of it
        self._held = held
        # paths the run saw but took no file of (site.untaken), which rules do not call missing
        self.untaken = untaken or {}
        # (the kind as check_files classified every file (kinds.with_kind), where it did)
        files = _path_columns(current).with_columns(
            *([] if "kind" in current.columns else [_kind_expr()]),
            # the classification, under names no decoded fact uses (DICOM facts have a `modality`)
            _modality=pl.col("modality"), _category=pl.col("category"), _session=pl.col("session_id"),
            _segment=pl.col("segment"), _layout=pl.col("layout"),
        ).collect()
        self.files = files
        self._facts_of = facts_of if callable(facts_of) else (lambda _wanted: facts_of)
        self._shared = {} if shared is None else shared
        self._of_kind: dict[str, pl.DataFrame] = {}
        self.person = self.of_kind(KIND_PERSON)
        ids = self.person.filter(
            pl.col("_ok") & (pl.col("delimiter") == ",") & pl.col("person_id").is_not_null()
        )
        self.person_ids: pl.Series | None = (
            ids.select(_norm_id(pl.col("person_id").explode())).to_series().drop_nulls().unique()
            if ids.height else None
        )
        # the file the ids come from as the site names it (OMOP/PERSON.CSV: a finding told to add a person to
        # OMOP/person.csv named a file the site does not have)
        self.person_csv: str = ids["srcfile"].min() if ids.height else "OMOP/person.csv"
        top = (pl.col("_n") >= 2) & ~pl.col("_top_l").is_in(["omop", "metadata"])
        folders = files.lazy().filter(top).group_by("_top").agg(
            _has_data=(pl.col("_second_l").is_in(["images", "waveforms"]) & (pl.col("_n") >= 3)).any(),
            _has_meta=((pl.col("_second_l") == "metadata") & (pl.col("_n") >= 3)).any(),
            _has_omop=((pl.col("_second_l") == "omop") & (pl.col("_n") >= 3)).any(),
        ).with_columns(_key=_norm_id(pl.col("_top"))).collect()
        in_omop = pl.col("_key").is_in(self.person_ids.implode()) if self.person_ids is not None else pl.lit(False)
        self.folders = folders.with_columns(_in_omop=in_omop).with_columns(
            # a folder holding an OMOP/ folder and no Images/ or Waveforms/ of its own is a submission's root inside
            # the site, not a person: a dated release folder (Multimodal-Linkage: the root "can either be a dated
            # release directory"), the site checked from the folder above it; its Metadata/ makes it no person. A
            # person_id of person.csv is a person's folder all the same (earlier editions' per-person OMOP/)
            _release=pl.col("_has_omop") & ~pl.col("_has_data") & ~pl.col("_in_omop"),
        ).with_columns(
            _is_person=(pl.col("_has_data") | pl.col("_has_meta") | pl.col("_in_omop")) & ~pl.col("_release")
        )
        # (is_in, not a join: a join copies every column of every file; 500k files: +150 MB at its peak)
        files = files.with_columns(
            _is_person=pl.col("_top").is_in(self.folders.filter(pl.col("_is_person"))["_top"].implode()))
        p, n, second = pl.col("_is_person"), pl.col("_n"), pl.col("_second_l")
        # an identifiable lookup table (layout.identifiable_table) anywhere: no other rule's "move it into ..." for it
        local_only = pl.col("srcfile").str.contains(LOCAL_ONLY_NAME)
        self.files = files.with_columns(
            _local_only=local_only,
            _person_file=p & (n == 2) & ~local_only,
            # Metadata/ lies at the site root (Waveform File Format v2.1: READINESS.md, SUBMISSION.md and the mapping
            # files "directly under the Metadata folder"); a person folder holds "an Images folder and a Waveforms folder"
            _person_subfolder=p & (n >= 3) & ~second.is_in(["images", "waveforms"]),
            _waveforms=p & (n >= 3) & (second == "waveforms"),
            _images=p & (n >= 3) & (second == "images"),
        ).with_columns(
            # a .dcm file that fits no image layout (classify: current or an earlier edition's); eq_missing: a name
            # without an extension (DICOMDIR, IM000001) has a null _ext_l, and a null here hid its path.unparsed
            _outside_series=pl.col("_images") & pl.col("_ext_l").eq_missing("dcm") & pl.col("parse_error").is_not_null(),
            # a compressed copy or an archive (file.compressed): no procedure sends one, and no rule reads inside it
            _compressed=pl.col("_name").str.contains(COMPRESSED_NAME),
        )
        # Names whose person id (before _<YYYYMMDD>_<HHMMSS>) is not the folder's. Nearly all names start
        # with "<folder>_": only the others are parsed.
        self.person_mismatch = (
            self.files.lazy().filter((pl.col("_waveforms") | pl.col("_images"))
                                     & ~pl.col("_name").str.starts_with(pl.col("_top") + "_"))
            .select("srcfile", "_top", "_name")
            .with_columns(_name_person=pl.col("_name").str.extract(r"^(.+?)_\d{8}_\d{6}(?:[_.]|$)", 1))
            .filter(pl.col("_name_person").is_not_null() & (pl.col("_name_person") != pl.col("_top")))
            .collect()
        )
        visits = self.of_kind(KIND_VISITS).filter(
            pl.col("_ok") & (pl.col("delimiter") == ",") & pl.col("visit_occurrence_id").is_not_null())
        # Each visit's person (norm ids), where visit_occurrence.csv has the column: every row, as the table repeats
        # them (a rule looks up the few visits it names: de-duplicated whole and split twice, 6M rows held +1,165 MiB
        # for 15.7 s; split once and kept as they are, +554 MiB for 5.4 s)
        with_person = visits.filter(pl.col("person_id").is_not_null())
        self.visit_persons: pl.DataFrame | None = (
            with_person.lazy().select(_joined("visit_occurrence_id"), _joined("person_id"))
            .explode("visit_occurrence_id", "person_id")
            .select(_visit=_norm_id(pl.col("visit_occurrence_id")), _visit_person=_norm_id(pl.col("person_id")))
            .drop_nulls().collect()  # (an empty table's list explodes to one null row)
            if with_person.height else None)
        # The visit ids of visit_occurrence.csv (as numbers where they are, repeated as the table repeats them); None
        # when it cannot be read.
        ids = [self.visit_persons["_visit"]] if self.visit_persons is not None else []
        without_person = visits.filter(pl.col("person_id").is_null())
        if without_person.height:
            ids.append(without_person.select(_norm_id(_joined("visit_occurrence_id").explode()).alias("_visit"))
                       .to_series().drop_nulls())
        self.visit_ids: pl.Series | None = pl.concat(ids) if ids else None
        # (a file at the root named OMOP is no OMOP/ folder: it was taken for one, whose 13 tables were all missing)
        self.omop_dir = (self.files.lazy().filter((pl.col("_top_l") == "omop") & (pl.col("_n") >= 2))
                         .select(pl.col("_top").min()).collect().item())

    def person_visit_spans(self, persons: pl.Series) -> pl.DataFrame | None:
        """The visits of the persons `persons` (norm ids) with their start and end (_visit_person, _visit, _start, _end,
        _zoned: written with a time zone, _start_as, _end_as: as written;
        a date alone is the whole day), as visit_occurrence.csv gives them; None where it gives no persons, starts and
        ends."""
        visits = self.of_kind(KIND_VISITS).filter(
            pl.col("_ok") & (pl.col("delimiter") == ",") & pl.col("visit_occurrence_id").is_not_null()
            & pl.col("person_id").is_not_null() & pl.col("visit_start").is_not_null() & pl.col("visit_end").is_not_null())
        if visits.height == 0:
            return None
        return (
            visits.lazy().select(_joined("visit_occurrence_id"), _joined("person_id"), _joined("visit_start"),
                                 _joined("visit_end"))
            .explode("visit_occurrence_id", "person_id", "visit_start", "visit_end")
            .with_columns(_visit_person=_norm_id(pl.col("person_id")))
            .filter(pl.col("_visit_person").is_in(persons.implode()))  # (the few persons of the rows, of millions)
            .select("_visit_person", _visit=pl.col("visit_occurrence_id").str.strip_chars(),
                    _start=visit_moment(pl.col("visit_start"), pl.col("visit_start"), end=False),
                    _end=visit_moment(pl.col("visit_end"), pl.col("visit_end"), end=True),
                    _zoned=has_zone(pl.col("visit_start")) | has_zone(pl.col("visit_end")),
                    _start_as=pl.col("visit_start"), _end_as=pl.col("visit_end"))
            .drop_nulls()
            .collect())

    def visit_spans(self, named: pl.Series) -> pl.DataFrame | None:
        """The start and end (Datetime; a date alone is the whole day) of the visits `named` (norm ids) that
        visit_occurrence.csv gives (_visit, _start, _end; _zoned, _start_as, _end_as as person_visit_spans gives them);
        None where it gives no starts and ends. A visit_occurrence_id the table repeats spans from its first start to
        its last end (registry.visit_person tells of the repeat)."""
        visits = self.of_kind(KIND_VISITS).filter(
            pl.col("_ok") & (pl.col("delimiter") == ",") & pl.col("visit_occurrence_id").is_not_null()
            & pl.col("visit_start").is_not_null() & pl.col("visit_end").is_not_null())
        if visits.height == 0:
            return None
        return (
            visits.lazy().select(_joined("visit_occurrence_id"), _joined("visit_start"), _joined("visit_end"))
            .explode("visit_occurrence_id", "visit_start", "visit_end")
            .with_columns(_visit=_norm_id(pl.col("visit_occurrence_id")))
            .filter(pl.col("_visit").is_in(named.implode()))  # (the few a registry names, of millions of rows)
            .with_columns(_zoned=has_zone(pl.col("visit_start")) | has_zone(pl.col("visit_end")))
            .group_by("_visit").agg(_start=visit_moment(pl.col("visit_start"), pl.col("visit_start"), end=False).min(),
                                    _end=visit_moment(pl.col("visit_end"), pl.col("visit_end"), end=True).max(),
                                    # (as written, of a row with a zone: registry.visit_time says the zone was dropped)
                                    _start_as=pl.col("visit_start").sort_by("_zoned", descending=True).first(),
                                    _end_as=pl.col("visit_end").sort_by("_zoned", descending=True).first(),
                                    _zoned=pl.col("_zoned").any())
            .collect())

    def with_untaken(self, missing: pl.DataFrame | pl.LazyFrame, path: str = "_path") -> pl.DataFrame:
        """`missing` (paths a rule did not find among the version's files, a few) with `_why`: why_untaken."""
        missing = missing.collect() if isinstance(missing, pl.LazyFrame) else missing
        return missing.with_columns(_why=pl.Series([why_untaken(self.untaken, p) for p in missing[path].to_list()],
                                                   dtype=pl.String))

    def unread(self) -> pl.LazyFrame:
        """file.unread: the files of every kind decoded so far whose read failed (after the other rules asked)."""
        # the read's error says what to do: true of its cause (a file gone, one this user may not read, a write)
        message = fmt("could not be read as recorded when it was checked, so no rule looked at its contents and "
                      "nothing of this read was kept: {}", pl.col("_unread"))
        found = [_found("file.unread", frame.filter(pl.col("_unread").is_not_null()), "srcfile", message)
                 for frame in [*self._of_kind.values(), *self._shared.values()]]
        found = [f for f in found if f is not NOTHING]
        return pl.concat(found) if found else NOTHING

    def holds(self) -> dict[str, bool]:
        """Whether the site holds files in a person's Waveforms/ and Images/ ({"Waveforms": …, "Images": …}): the
        whole site's where check() gave it (a site checked in parts), else these files'. A part's own answer made a
        site checked in parts say its waveform linkage rows link no file (no waveform registry shipped, and no
        waveform file in that part) where the whole check said to ship the registry."""
        if self._held is None:
            self._held = modalities_held(self.files)
        return self._held

    def of_kind(self, kind: str) -> pl.DataFrame:
        """The files of `kind` with their decoded facts."""
        known = self._shared if kind in SHARED_KINDS else self._of_kind
        if kind not in known:
            wanted = self.files.lazy().filter(pl.col("kind") == kind).select("kind", "md5").collect()
            known[kind] = _with_facts(self.files, self._facts_of(wanted), kind)
        return known[kind]
