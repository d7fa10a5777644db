"""The rules on the OMOP tables (which are there, and their header rows) and on the
waveform-visit links table of Waveform File Format v2.0 (superseded by the linkage registries;
optional, but checked where a site still ships it)."""

from __future__ import annotations

import re

import polars as pl

from ..frames import fmt
from .rules import (
    CSV_KINDS,
    FORBIDDEN_TABLES,
    KIND_LINKS,
    KIND_VISITS,
    LINKS_TABLE,
    OMOP_KEYS,
    OMOP_MIN_COLUMNS,
    OMOP_REQUIRED_COLUMNS,
    REQUIRED_TABLES,
)
from .site import _Across, _found, _norm_id, _one, _Site, _unreadable


# What ends the name of one part of a table exported in several files: _1, -00001, _part1, _part_2, _chunk3,
# _2019, _2024-01 (a table split by year or month)
_PART_SUFFIX = r"(?:[_-]*(?:part|chunk)?[_-]*[0-9]+)+$"


# The extensions of tables in a format that is not text (a column store, a workbook, a statistics package's file, a
# database): renamed to .csv, such a file is still not comma-delimited text
_BINARY_FORMAT = re.compile(r"\.(parquet|pq|orc|avro|feather|arrow|ipc|xlsx|xlsm|xlsb|xls|ods|sas7bdat|xpt|dta|sav|rds|"
                            r"rdata|pkl|pickle|h5|hdf5|sqlite|db|duckdb|mdb|accdb)$")


def _omop(site: _Site) -> list[pl.LazyFrame]:
    if site.omop_dir is None:
        return []
    omop_dir = site.omop_dir
    omop = site.files.filter((pl.col("_top_l") == "omop") & (pl.col("_n") >= 2))  # (not a root file named OMOP)
    tables = omop.filter(pl.col("_n") == 2)["_table"].drop_nulls().unique().to_list()
    known = [*OMOP_KEYS, LINKS_TABLE]
    in_folder = pl.col("_n") == 2
    missing = [table for table in REQUIRED_TABLES if table not in tables]
    # A missing table's file under another extension (death.txt, person.csv.bak; not a compressed one: file.compressed)
    # or with a prefix (cdm_person.csv, an export's schema name: 13 unexpected files and 13 missing tables were said of
    # one cause) is told with the table, as the file to rename, and not again as an unknown file. The longest table
    # a name ends with: cdm_observation_period is observation_period, not observation. So are the parts of a table
    # exported in several files (measurement_part1.csv, person_2.csv, measurement.000.csv, a folder
    # OMOP/measurement/ of part-00000.csv files): one part was told to be renamed as the table and the others to be
    # renamed or removed, which would submit a table missing the rows of its other parts.
    stem = pl.col("_name").str.to_lowercase().str.extract(r"^([^.]+)")
    whole = stem.str.replace(_PART_SUFFIX, "")  # (a part's number dropped)
    # (a compressed part, part-00001.csv.gz, is one of the parts to join too: file.compressed says to decompress it)
    in_table_folder = (pl.col("_n") == 3) & (pl.col("_ext_l").eq("csv").fill_null(False) | (
        pl.col("_compressed") & pl.col("_name").str.to_lowercase().str.contains(r"\.csv\.")))
    folder = pl.col("_second_l").str.strip_suffix(".csv")  # (Spark writes a table as a folder OMOP/person.csv/)

    def named(tables: list[str]) -> pl.Expr:
        """The table (of `tables`) a file in OMOP/ looks like, or a part of: by its name, or its folder's."""
        def like(name: pl.Expr, table: str) -> pl.Expr:
            return (name == table) | name.str.ends_with(f"_{table}")
        return pl.coalesce([pl.when(pl.when(in_folder).then(like(stem, table) | like(whole, table))
                                    .otherwise(in_table_folder & like(folder, table))).then(pl.lit(table))
                            for table in sorted(tables, key=len, reverse=True)] or [pl.lit(None, pl.String)])
    misnamed = (omop.filter((in_folder & (~pl.col("_table").is_in(known)).fill_null(True)) | in_table_folder)
                .with_columns(_stem=named(missing)).filter(pl.col("_stem").is_not_null()).sort("srcfile"))
    candidates: dict[str, list[tuple[str, bool]]] = {}
    for table, srcfile, compressed in misnamed.select("_stem", "srcfile", "_compressed").rows():
        candidates.setdefault(table, []).append((srcfile, compressed))
    # (a compressed table alone is file.compressed's, which says to decompress it: "add" the table is true)
    parts = {table: [srcfile for srcfile, _ in found] for table, found in candidates.items()
             if len(found) > 1 or not found[0][1]}
    out: list[pl.LazyFrame] = []
    for table in missing:
        found = parts.get(table, [])
        # a folder where the table's file belongs (Spark's OMOP/person.csv/part-00000-*.csv, with _SUCCESS beside)
        instead = (f" (a file, in place of the folder {omop_dir}/{table}.csv/ and its other files)"
                   if any(f.lower().startswith(f"omop/{table}.csv/") for f in found) else "")
        if len(found) == 1 and (binary := _BINARY_FORMAT.search(found[0].lower())):
            # (a table saved as Parquet or a workbook was told to be renamed to .csv: its bytes would stay Parquet)
            message = (f"OMOP table {table} is missing: {found[0]} is {binary.group(1).lower()} data, not comma-delimited "
                       f"text, and renaming it does not make it one; if it is the table, export it as "
                       f"{omop_dir}/{table}.csv{instead} (comma-delimited UTF-8 text with a header row, as the upload "
                       f"procedure asks) and remove {found[0]}")
        elif len(found) == 1:
            message = (f"OMOP table {table} is missing: {'rename' if found[0].count('/') == 1 else 'move'} {found[0]} "
                       f"to {omop_dir}/{table}.csv{instead} if it is the table (a comma-delimited snapshot with a header "
                       f"row)")
        elif found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            message = (f"OMOP table {table} is missing, and {len(found)} files look like parts or copies of it "
                       f"({shown}): the upload procedure asks for each table as one comma-delimited file with one "
                       f"header row; join the parts into {omop_dir}/{table}.csv{instead}, keeping the header row once, or "
                       f"rename the one that is the whole table to it, and remove the others")
        else:
            message = (f"OMOP table {table} is missing: add {omop_dir}/{table}.csv, a full snapshot with a header row "
                       f"(the upload procedure asks for all 13 clinical tables; a table the site does not capture is "
                       f"sent with its header row only)")
        out.append(_one("omop.missing_table", f"{omop_dir}/{table}.csv", message))
    omop = omop.filter(~pl.col("srcfile").is_in([f for found in parts.values() for f in found]))
    # a part or copy of a table the folder holds (measurement_part2.csv beside measurement.csv)
    part_of = named([table for table in REQUIRED_TABLES if table in tables])
    out.append(_found("omop.specimen", omop.filter(in_folder & pl.col("_table").is_in(FORBIDDEN_TABLES)), "srcfile",
                      pl.lit("CHoRUS does not collect the specimen table: remove this file")))
    out.append(_found(
        "omop.unexpected_file",
        omop.filter((~in_folder | (~pl.col("_table").is_in([*known, *FORBIDDEN_TABLES])).fill_null(True))
                    # (file.compressed, layout.identifiable_table tell these)
                    & ~pl.col("_compressed") & ~pl.col("_local_only")), "srcfile",
        pl.when(~in_folder & pl.col("_name").str.contains(r"^(_SUCCESS|_committed_.*|_started_.*|\..*\.crc)$")).then(pl.lit(
            "a marker or checksum file a Spark export writes beside a table's parts, not data: remove it"))
        .when(~in_folder).then(pl.lit(
            "in a subfolder of OMOP/, where no table is read: the tables lie directly in OMOP/ (one snapshot of "
            "each); move it there or remove it (keep earlier versions outside the site)"))
        # (the registries are read where the linkage procedure delivers them: at the root of the release)
        .when(pl.col("_name").str.to_lowercase().str.contains(r"registry.*\.csv$")).then(pl.lit(
            "a linkage registry in OMOP/, where none is read: the linkage procedure delivers the registries with the "
            "extract, at the site root (or in Metadata/); move it there"))
        .when(part_of.is_not_null() & in_folder).then(fmt(
            "looks like a part or a copy of the {} table, which is {}/{}.csv: the upload procedure asks for each table "
            "as one file, a full snapshot; join its rows into that file (if they are not there yet) and remove it",
            part_of, pl.lit(omop_dir), part_of))
        .otherwise(pl.lit("not an OMOP table CHoRUS collects: OMOP/ holds <table>.csv for the CDM 5.4 clinical tables "
                          "and waveform_visit_links.csv only; rename or remove it"))))

    csvs = pl.concat(
        [site.of_kind(k).select("srcfile", "_table", "_known", "_ok", "error", "columns", "delimiter")
         for k in CSV_KINDS], how="vertical_relaxed")
    parsed = csvs.filter(pl.col("_ok"))
    comma = parsed.filter(pl.col("delimiter") == ",")
    looks_like_value = pl.col("columns").list.eval(pl.element().str.contains(r"^[-+.0-9]")).list.any()
    # "sep=," before the header row: the delimiter hint some exports write for spreadsheets (told as a header that
    # lacked person_id: "export the table with its CDM 5.4 column names", though it has them, on the second line)
    sep_line = pl.col("columns").list.first().str.contains(r"^sep=") & (pl.col("columns").list.len() <= 2)
    no_header = pl.col("columns").list.len().eq(0) | looks_like_value | pl.col("columns").list.eval(
        pl.element() == "").list.all() | sep_line.fill_null(False)
    one_quoted = (pl.col("columns").list.len() == 1) & pl.col("columns").list.first().str.contains(",", literal=True)
    tables_only = pl.col("_table").is_in(list(OMOP_KEYS))
    key = pl.col("_table").replace_strict(OMOP_KEYS, default=None, return_dtype=pl.String)
    has_key = pl.col("columns").list.set_intersection(pl.concat_list(key)).list.len() > 0
    delim_name = pl.col("delimiter").replace_strict(
        {"\t": "tabs", ";": "semicolons", "|": "pipes"}, default=pl.col("delimiter"), return_dtype=pl.String)
    out += [
        _found("omop.unreadable", csvs.filter(pl.col("error").is_not_null()), "srcfile",
               _unreadable("OMOP table", "write it as UTF-8 comma-delimited text with a header row")),
        _found("omop.delimiter", parsed.filter(pl.col("delimiter") != ","), "srcfile",
               fmt("the header row is split by {}, not commas: export the table comma-delimited", delim_name)),
        # names as read (lower-cased): PERSON_ID and person_id are one column named twice
        _found("omop.duplicate_column",
               comma.filter(~no_header & pl.col("columns").list.eval(pl.element().filter(pl.element() != "").is_duplicated())
                            .list.any()), "srcfile",
               fmt("the header names column{|s} {} more than once (column names are compared case aside): a loader "
                   "cannot tell which is meant; export the table with each column once",
                   pl.col("columns").list.eval(pl.element().filter(pl.element().is_duplicated() & (pl.element() != ""))
                                               .unique(maintain_order=True)).list.join(", "),
                   n=pl.col("columns").list.eval(pl.element().filter(pl.element().is_duplicated() & (pl.element() != ""))
                                                 .unique()).list.len())),
        _found("omop.no_header", comma.filter(tables_only & no_header), "srcfile",
               # a first line that is blank (or only a byte-order mark) holds no values either
               pl.when(pl.col("columns").list.eval(pl.element() == "").list.all() | (pl.col("columns").list.len() == 0))
               .then(pl.lit("the first line is empty, not the column names: export the table with its header row "
                            "first"))
               .when(sep_line).then(pl.lit(
                   "the first line is a delimiter hint for spreadsheets (sep=), not the column names: remove that line, "
                   "so that the header row comes first"))
               .otherwise(pl.lit("the first line holds values, not column names: export the table with its header "
                                 "row"))),
        _found("omop.missing_key", comma.filter(tables_only & ~no_header & ~has_key), "srcfile",
               # a header row quoted whole ('"person_id,gender_concept_id"'): one name holding its commas, told as
               # lacking its key, to be exported with the names it has
               pl.when(one_quoted).then(fmt(
                   "the header row is read as one column name, '{}': it is written in quotes as a whole, which make "
                   "its commas part of one name; write the names without the quotes around the row (or quote each "
                   "name apart)", pl.col("columns").list.first().str.slice(0, 80)))
               .otherwise(fmt("the header lacks the key column {}: export the table with its CDM 5.4 column names", key))),
    ]
    # (a table without its key is told so above)
    required = pl.col("_table").replace_strict({t: list(c) for t, c in OMOP_REQUIRED_COLUMNS.items()}, default=None,
                                               return_dtype=pl.List(pl.String))
    lacking = required.list.set_difference(pl.col("columns")).list.sort()  # (a set difference keeps no order)
    out.append(_found(
        "omop.required_columns",
        comma.filter(tables_only & ~no_header & has_key).with_columns(_lacking=lacking)
        .filter(pl.col("_lacking").list.len() > 0), "srcfile",
        fmt("the header lacks {}, which CDM 5.4 requires of the {} table (the upload procedure asks for the tables as "
            "CDM 5.4 defines them): export the table with these columns", pl.col("_lacking").list.join(", "), pl.col("_table"))))
    # person.csv's key given on more than one row (a loader's primary key refuses the table; a person's rows may differ)
    repeated = site.person.filter(_PARSED & (pl.col("n_repeated_person_id").fill_null(0) > 0))
    out.append(_found("person.repeated_id", repeated, "srcfile", fmt(
        "{} person_id{|s} {is|are} on more than one row (e.g. {}): person_id is the person table's key in CDM 5.4, one "
        "row per person; keep one row of each person (or give each person their own person_id)",
        pl.col("n_repeated_person_id"), pl.col("repeated_person_id").list.join(", "), n=pl.col("n_repeated_person_id"))))
    # visit_occurrence.csv's rows (omop_visits.v11: of each fault a few examples and how many)
    visits = site.of_kind(KIND_VISITS).filter(_PARSED)
    out.append(_found("visit.date_format", visits.filter(pl.col("n_bad_dates").fill_null(0) > 0), "srcfile", fmt(
        "{} visit start or end date{|s} {is|are} not written as an ISO date (e.g. {}): CDM 5.4 stores them as DATE and "
        "DATETIME, which a loader reads as YYYY-MM-DD (HH:MM:SS), and the linkage rules cannot read such a visit's span "
        "(it was left out of registry.visit_time and registry.visit_missing); export the dates as YYYY-MM-DD and the "
        "datetimes as YYYY-MM-DD HH:MM:SS, with real calendar dates",
        pl.col("n_bad_dates"), pl.col("bad_dates").list.join("; "), n=pl.col("n_bad_dates"))))
    out.append(_found("visit.end_before_start", visits.filter(pl.col("n_reversed_visits").fill_null(0) > 0), "srcfile",
                      fmt("{} visit{|s} {ends|end} before {it starts|they start} (e.g. {}): no capture time lies inside "
                          "such a visit, so no registry row can be linked to it; fix the visit's start and end (swapped, "
                          "or shifted apart) in visit_occurrence.csv",
                          pl.col("n_reversed_visits"), pl.col("reversed_visits").list.join("; "),
                          n=pl.col("n_reversed_visits"))))
    out.append(_found("visit.repeated_id", visits.filter(pl.col("n_repeated_visit_id").fill_null(0) > 0), "srcfile", fmt(
        "{} visit_occurrence_id{|s} {is|are} on more than one row (e.g. {}): visit_occurrence_id is the visit table's "
        "key in CDM 5.4, one row per visit, and the registries' visit_id names it; keep one row of each visit (or give "
        "each visit its own visit_occurrence_id)",
        pl.col("n_repeated_visit_id"), pl.col("repeated_visit_id").list.join(", "), n=pl.col("n_repeated_visit_id"))))
    for table, columns in OMOP_MIN_COLUMNS.items():
        lacking = pl.concat_list([pl.when(~pl.col("columns").list.contains(c)).then(pl.lit(c)) for c in columns]
                                 ).list.drop_nulls()  # in the procedure's order
        out.append(_found(
            f"omop.{table}_columns",
            comma.filter((pl.col("_table") == table) & ~no_header & has_key).with_columns(_lacking=lacking)
            .filter(pl.col("_lacking").list.len() > 0), "srcfile",
            fmt("the header lacks {}: the upload procedure asks the {} table to keep at least {}; export it with "
                "these columns", pl.col("_lacking").list.join(", "), pl.lit(table), pl.lit(", ".join(columns)))))
    return out


_PARSED = pl.col("_ok") & (pl.col("delimiter") == ",")  # a links table read, comma-delimited
_BOTH = pl.col("visit_occurrence_id").is_not_null() & pl.col("session").is_not_null()  # ... with both columns


def _usable_links(site: _Site) -> pl.DataFrame:
    """The links tables with both columns (none without OMOP/)."""
    links = site.of_kind(KIND_LINKS)
    return links.clear() if site.omop_dir is None else links.filter(_PARSED & _BOTH)


def _links(site: _Site, across: _Across) -> list[pl.LazyFrame]:
    """The links table's columns and visits (its sessions: _unknown_sessions, across parts)."""
    links = site.of_kind(KIND_LINKS)
    if site.omop_dir is None or links.height == 0:
        return []
    across.session_ids.append(
        site.files.lazy().filter(pl.col("_waveforms") & pl.col("session_id").is_not_null()
                                 & (pl.col("session_id") != "") & pl.col("parse_error").is_null())
        .select("session_id").unique().collect())
    out = [_found("layout.superseded", links, "srcfile", pl.lit(
        f"{LINKS_TABLE}.csv is from Waveform File Format v2.0: today each waveform file's visit is given in the "
        "waveform registry (visit_id), which `chorus-batch registry` writes; this table is still checked"))]
    parsed = links.filter(_PARSED)
    out.append(_found(
        "links.columns", parsed.filter(~_BOTH),
        "srcfile",
        fmt("the header ({}) lacks visit_occurrence_id and/or session_id: the table needs both columns, "
                  "named so in its header row", pl.col("columns").list.join(","))))
    usable = parsed.filter(_BOTH)
    if usable.height == 0:
        return out  # no usable links table: links.columns or omop.* already say why
    pairs = usable.select("srcfile", "visit_occurrence_id", "session").explode("visit_occurrence_id", "session")
    if site.visit_ids is not None:
        unknown = pairs.with_columns(_visit=_norm_id(pl.col("visit_occurrence_id"))).filter(
            ~pl.col("_visit").is_in(site.visit_ids.implode()))
        out.append(_found(
            "links.unknown_visit", unknown.unique(["srcfile", "visit_occurrence_id"]), "srcfile",
            fmt("links visit_occurrence_id {}, which is not in visit_occurrence.csv: fix the id or add the visit",
                      pl.col("visit_occurrence_id"))))
    return out


def _unknown_sessions(site: _Site, across: _Across) -> list[pl.LazyFrame]:
    """Sessions the links table names that no part holds."""
    usable = _usable_links(site)
    if usable.height == 0:
        return []
    sessions = pl.concat(across.session_ids).unique()
    pairs = usable.select("srcfile", "session").explode("session")
    return [_found(
        "links.unknown_session", pairs.join(sessions, left_on="session", right_on="session_id", how="anti")
        .unique(["srcfile", "session"]), "srcfile",
        fmt("links session {}, which is not on the site: fix the session id or remove the row",
                  pl.col("session")))]
