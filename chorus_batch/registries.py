"""The linkage registries of the Multimodal-Linkage procedure, generated from the manifest.

One row per file: a waveform registry and an image registry, with

  file_id   the manifest's first file_id of the path: the same in every version while the path lives
  proc_id   one per procedure (a waveform session, an image accession), allocated once from the
            configured range and kept in the manifest (registry.proc_id), so it never changes
  person_id, group_id (the session or accession), visit_id (the person's visit whose start and end
            enclose the file's datetime; empty when none does)
  datetime  the capture time: a DICOM header's acquisition, content, series or study date/time, the
            WFDB header's base date and time (or the EDF header's start) of the file's record, else the path's stamp
  src_file  where the file is (the root it was found under + its path)
  trg_file  the waveform registry: its site-relative path (Multimodal-Linkage: "Name and path of the renamed
            file to be delivered with your extract"); the image registry: empty (the Imaging SOP's
            image_registry, which fixes that table's columns: "this will be populated centrally, leave blank or null")

and, with `omop`, the PROCEDURE_OCCURRENCE rows the procedure derives from them (one per proc_id).
Contents are read only where the manifest has no facts of them yet (headers, by content).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from .classify import COMPRESSED_NAME, RECORDS_NAME, registry_listed
from .errors import UsageError
from .frames import STAMP, ZONE_DROPPED, fmt, has_zone, linkage_without_rows, visit_moment
from .fsutil import (complete_interrupted_sets, missing_folders, private_folder, remove_empty_folders,
                     write_private_together)
from .progress import Progress, log
from .sources import Source
from .store import Manifest
from .errors import first_run_command, pass_db
from .units import plural
from .validate.rules import KIND_DICOM, KIND_EDF, KIND_WFDB, LINKAGE_CONCEPTS

if TYPE_CHECKING:
    from .config import CloudSettings
    from .review import SQLiteReader

IMAGING_PROCEDURE, MONITORING_PROCEDURE = 4180938, 4141651  # procedure_concept_id (Multimodal-Linkage)
STANDARD_ALGORITHM = 32880  # procedure_type_concept_id: derived by an algorithm, not recorded in the EHR
REGISTRY_COLUMNS = ["file_id", "proc_id", "person_id", "group_id", "visit_id", "datetime", "src_file", "trg_file"]
PROCEDURE_COLUMNS = ["procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                     "procedure_datetime", "procedure_type_concept_id", "visit_occurrence_id", "procedure_source_value"]


@dataclass
class Registries:
    version: str
    waveforms: pl.DataFrame  # REGISTRY_COLUMNS
    images: pl.DataFrame  # image_registry_id + REGISTRY_COLUMNS
    procedures: pl.DataFrame  # PROCEDURE_COLUMNS
    new_proc_ids: int  # allocated by this call
    warnings: list[str] = field(default_factory=list)  # what the rows could not take from the version's content


def _norm(expr: pl.Expr) -> pl.Expr:
    """Ids as OMOP stores them: digits without leading zeros (an integer written as a decimal, 1.0, as pandas writes an
    id column with empty cells, is that integer: read as text, its visits matched no person, without a word)."""
    s = expr.cast(pl.String).str.strip_chars().str.strip_chars('"').str.replace(r"^(\d+)\.0*$", "${1}")
    return pl.when(s.str.contains(r"^\d+$")).then(s.str.replace(r"^0+(\d)", "${1}")).otherwise(s)


def _header_time(facts: pl.DataFrame, kind: str) -> pl.DataFrame:
    """md5 -> capture datetime from the facts of one kind (NULL where the header has none)."""
    part = facts.filter(pl.col("kind") == kind)
    if kind == KIND_DICOM:
        dtype = pl.Struct({k: pl.String for k in ("acquisition_date", "acquisition_time", "content_date",
                                                   "content_time", "series_date", "series_time", "study_date",
                                                   "study_time")})
        f = part.select("md5", pl.col("facts").str.json_decode(dtype).alias("_f")).unnest("_f")

        def stamp(day: str, tm: str | None) -> pl.Expr:
            digits = (pl.lit("000000") if tm is None else
                      pl.col(tm).str.replace_all(r"[^0-9.]", "").str.extract(r"^(\d{2,6})").str.pad_end(6, "0"))
            return pl.concat_str(pl.col(day).str.replace_all(r"[^0-9]", ""), digits).str.strptime(
                pl.Datetime, "%Y%m%d%H%M%S", strict=False)

        # A date and its time where the header has both, in this order; only then a date alone, at its midnight (told
        # as a time not known). An acquisition date whose time was removed (a de-identifier's choice) was written as
        # 00:00:00 over the study's full date and time, and the visit was looked up at that midnight, without a word
        pairs = [("acquisition_date", "acquisition_time"), ("content_date", "content_time"),
                 ("series_date", "series_time"), ("study_date", "study_time")]
        full = pl.coalesce([stamp(day, tm) for day, tm in pairs])
        when = pl.coalesce(full, *[stamp(day, None) for day, _ in pairs])
        return f.select("md5", when.alias("_when"), (full.is_null() & when.is_not_null()).alias("_day_only"))
    else:
        day, clock = ("base_date", "base_time") if kind == KIND_WFDB else ("start_date", "start_time")
        dtype = pl.Struct({day: pl.String, clock: pl.String})
        f = part.select("md5", pl.col("facts").str.json_decode(dtype).alias("_f")).unnest("_f")
        when = pl.concat_str(day, pl.lit(" "), pl.col(clock).str.slice(0, 8)).str.strptime(
            pl.Datetime, "%Y-%m-%d %H:%M:%S", strict=False)
    return f.select("md5", when.alias("_when"), pl.lit(False).alias("_day_only"))


class _WouldWrite(Exception):
    """build_registries(write=False) met something to record (headers never read, proc_ids to allocate)."""


def _facts(manifest: Manifest, wanted: list[tuple[pl.DataFrame, str]], sources: Mapping[int | None, Source],
           workers: int, progress: Progress | None = None, *, write: bool = True,
           label: str = "") -> tuple[pl.DataFrame, pl.DataFrame]:
    """The facts of each (files, kind) pair's files (srcfile, md5, root_id, size, mtime_ns, etag): cached ones, and
    the rest read now; and the files (srcfile) whose header could not be read as recorded (written since, gone,
    unreadable). All kinds at once: a root that is not there stops the command once, before anything is read."""
    from .validate.run import read_new_facts, refuse_unreachable

    cache = manifest.validation
    # With the size, mtime and etag the MD5 was recorded with: a file written since gives no facts (a "retry"), never
    # the new content's facts cached under the recorded MD5 (the registry of that version, and validate, would take
    # them for good)
    files = pl.concat([f.select("srcfile", "md5", "root_id", "size", "mtime_ns", "etag", kind=pl.lit(kind))
                       for f, kind in wanted])
    known = cache.known_facts(files)
    todo = files.join(known, on=["kind", "md5"], how="anti").unique(["kind", "md5"], keep="first")
    readers = {root_id: sources.get(root_id) or sources.get(None) for root_id in todo["root_id"].unique().to_list()}
    # (validate's check: a root recorded but not there, a disk not mounted, was a "no longer as recorded" warning per
    # header and registries written without their capture times, exit 1)
    refuse_unreachable(todo, readers, what=f"version {label}", where=str(manifest.path), to="date their registry rows",
                       nothing="nothing was read, no registry written", again="write the registries again")
    if todo.height and not write:
        raise _WouldWrite
    unread = pl.DataFrame(schema={"srcfile": pl.String})
    if todo.height:
        new = read_new_facts(todo, readers, workers=workers, progress=progress)  # type: ignore[arg-type]
        retry = pl.col("facts").str.contains('"retry":true', literal=True)
        cache.save_facts(new.filter(~retry))
        known = pl.concat([known, new.filter(~retry).select(known.columns)])
        unread = files.join(new.filter(retry).select("kind", "md5"), on=["kind", "md5"], how="semi").select("srcfile")
    return known, unread


def _read_omop(files: pl.DataFrame, table: str, columns: list[str], sources: Mapping[int | None, Source]) -> pl.DataFrame | None:
    """Some columns of OMOP/<table>.csv (as text; absent columns NULL), or None without that table."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rows = _omop_rows(files, table)
    if rows.height == 0:
        return None
    srcfile, root_id = rows.row(0)[:2]
    source = sources.get(root_id) or sources.get(None)
    if source is None:
        return None
    from .validate.readers import BadContent, _arrow_failure, _csv_header, _Gate

    fix = "make it UTF-8 comma-delimited text with a header row (`chorus-batch validate` says more)"
    try:
        opened = source.open(srcfile)
    except OSError as exc:  # most often a site moved since the run recorded its root: not an internal error
        from .sources.local import root_gone

        gone = root_gone(source) if isinstance(exc, FileNotFoundError) else None
        raise UsageError(f"cannot read {srcfile} (the visits files are placed in) from the site root {source.description}: "
                         f"{exc.strerror or exc}" + (f"; {gone}" if gone else ""), where=srcfile,
                         fix="if the site moved since the run that recorded it, pass --site with its root; else check "
                             "that the file is there and readable, then run the command again") from None
    with opened as f:
        try:
            # the names as written (a BOM, quotes, CR line ends read as validate reads them)
            head, header, ended = _csv_header(f)
        except BadContent as exc:
            raise UsageError(f"cannot read {srcfile}: {exc}", where=srcfile, fix=fix) from None
        except OSError as exc:
            raise UsageError(f"cannot read {srcfile}: {exc}", where=srcfile,
                             fix="check that the file is there and readable, then run the command again") from None
        if head["delimiter"] != ",":  # (read as comma-delimited, its names were no column: an internal error)
            split = {"\t": "tabs", ";": "semicolons", "|": "pipes"}.get(head["delimiter"], repr(head["delimiter"]))
            raise UsageError(f"cannot read {srcfile}: its header row is split by {split}, not commas, as the "
                             "procedures' CSV tables are", where=srcfile, fix=fix)
        present = [n for n in header if n.strip().strip('"').strip().lower() in columns]
        # a column named twice (person_id,PERSON_ID; validate's omop.duplicate_column): which one is meant cannot be
        # told (pyarrow gave both, and polars refused them: an internal error)
        twice = sorted({c for c, k in Counter(head["columns"]).items() if k > 1 and c in columns})
        if twice:
            raise UsageError(f"cannot read {srcfile}: its header row names column{'s' if len(twice) > 1 else ''} "
                             f"{', '.join(twice)} more than once (column names are compared case aside), so which "
                             "one is meant cannot be told", where=srcfile,
                             fix="export the table with each column once (`chorus-batch validate` says more)")
        if ended:  # the header row alone, unterminated (pyarrow: "Empty CSV file")
            return pl.DataFrame(schema={c: pl.String for c in columns})
        f.seek(0)
        gate = _Gate(f)
        try:
            table_ = pacsv.read_csv(gate.feed(),  # (errors name the row:)
                                    read_options=pacsv.ReadOptions(use_threads=False),
                                    convert_options=pacsv.ConvertOptions(
                                        include_columns=present, column_types={n: pa.string() for n in present}))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            # in the site's terms, without pyarrow's copy of the row (person ids, clinical values)
            raise UsageError(f"cannot read {srcfile}: {_arrow_failure(exc, gate, 1 << 20, header)}", where=srcfile,
                             fix=fix) from None
        except OSError as exc:
            raise UsageError(f"cannot read {srcfile}: {exc}", where=srcfile,
                             fix="check that the file is there and readable, then run the command again") from None
        finally:
            gate.close()
    frame = pl.from_arrow(table_)
    assert isinstance(frame, pl.DataFrame)
    frame.columns = [c.strip().lower() for c in frame.columns]
    return frame.with_columns([pl.lit(None, pl.String).alias(c) for c in columns if c not in frame.columns]).select(columns)


def _not_as_recorded(files: pl.DataFrame, table: str, sources: Mapping[int | None, Source]) -> str | None:
    """OMOP/<table>.csv's path where the file on the site is no longer the content the version recorded (its size and
    mtime moved and its MD5 with them, or its etag): what is read of it now is not that version's table."""
    from .sources.base import READ_SIZE
    from .validate.readers import _written_since

    rows = _omop_rows(files, table)
    if rows.height == 0:
        return None
    srcfile, root_id, size, mtime_ns, etag, md5 = rows.select("srcfile", "root_id", "size", "mtime_ns", "etag", "md5").row(0)
    source = sources.get(root_id) or sources.get(None)
    if source is None or _written_since(source, srcfile, size, mtime_ns, etag) is None:
        return None
    if etag is None and hasattr(source, "hash_file"):  # a copy that kept the content but not the mtime is as recorded
        try:
            if source.hash_file(srcfile, bytearray(READ_SIZE)).md5 == md5:
                return None
        except OSError:
            return None  # (gone or unreadable: reading it says so, with what to do)
    return srcfile


def _removed_since(manifest: Manifest, files: pl.DataFrame, table: str) -> str | None:
    """OMOP/<table>.csv's path where the version has it and the latest version no longer does (removed since)."""
    rows = _omop_rows(files, table)
    if rows.height == 0:
        return None
    srcfile = rows["srcfile"][0]
    return srcfile if manifest.removed_in(pl.Series([srcfile])).height else None


def _omop_rows(files: pl.DataFrame, table: str) -> pl.DataFrame:
    """The rows of `files` that are OMOP/<table>.csv (any letter case)."""
    return files.filter(pl.col("srcfile").str.to_lowercase() == f"omop/{table}.csv")


def _of_registry_persons(visits: pl.DataFrame, rows: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """The `visits` (visit_id, _person, _start_as, _end_as) of persons with registry `rows`, by visit_id, and the
    first three as a warning quotes them ("visit 7: start '...', end '...'")."""
    visits = visits.join(rows.select(_person=_norm(pl.col("person_id"))).unique(), on="_person", how="semi"
                         ).sort("visit_id")
    return visits, "; ".join(f"visit {v}: start {s!r}, end {e!r}" for v, s, e in
                             visits.head(3).select("visit_id", "_start_as", "_end_as").iter_rows())


def _visits(files: pl.DataFrame,
            sources: Mapping[int | None, Source]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """person, visit_id, start, end (datetimes; from the dates, whole days, where datetimes are absent); the
    visits of a person whose start or end reads as neither, or that end before they start; and those whose start or
    end datetime names a time zone (Z, +01:00), read as the clock time written (the last two: _person, visit_id,
    _start_as, _end_as: as written)."""
    cols = ["visit_occurrence_id", "person_id", "visit_start_date", "visit_start_datetime", "visit_end_date",
            "visit_end_datetime"]
    frame = _read_omop(files, "visit_occurrence", cols, sources)
    if frame is None:
        frame = pl.DataFrame(schema={c: pl.String for c in cols})
    read = frame.select(_person=_norm(pl.col("person_id")), visit_id=_norm(pl.col("visit_occurrence_id")),
                        _start=visit_moment(pl.col("visit_start_datetime"), pl.col("visit_start_date"), end=False),
                        _end=visit_moment(pl.col("visit_end_datetime"), pl.col("visit_end_date"), end=True),
                        _start_as=pl.coalesce(pl.col("visit_start_datetime").replace("", None), "visit_start_date"),
                        _end_as=pl.coalesce(pl.col("visit_end_datetime").replace("", None), "visit_end_date"))
    # (a visit ending before it starts, an ETL's or a date shift's slip, enclosed nothing either, without a word)
    bad = pl.col("_start").is_null() | pl.col("_end").is_null() | (pl.col("_end") < pl.col("_start"))
    unread = read.filter(pl.col("_person").is_not_null() & bad)
    zoned = read.filter(pl.col("_person").is_not_null() & ~bad & (
        has_zone(frame["visit_start_datetime"]) | has_zone(frame["visit_end_datetime"])))
    return (read.filter(~bad).drop_nulls(["_person"]).drop("_start_as", "_end_as"),
            unread.select("_person", "visit_id", "_start_as", "_end_as"),
            zoned.select("_person", "visit_id", "_start_as", "_end_as", "_start", "_end"))


def _with_visits(rows: pl.DataFrame, visits: pl.DataFrame) -> pl.DataFrame:
    """visit_id: of the person's visits enclosing the datetime, the latest-starting (then the smallest id)."""
    keyed = rows.with_row_index("_row").with_columns(_person=_norm(pl.col("person_id")))
    hits = (
        keyed.select("_row", "_person", "_when").drop_nulls().join(visits, on="_person")
        .filter((pl.col("_start") <= pl.col("_when")) & (pl.col("_when") <= pl.col("_end")))
        # (the smallest id as a number: as text, visit 10 came before visit 9)
        .sort([pl.col("_row"), pl.col("_start"), pl.col("visit_id").cast(pl.Int64, strict=False), pl.col("visit_id")],
              descending=[False, True, False, False], nulls_last=True)
        .unique("_row", keep="first").select("_row", "visit_id")
    )
    return keyed.join(hits, on="_row", how="left").sort("_row").drop("_row", "_person")


def _allocate(manifest: Manifest, records: pl.DataFrame, ranges: Mapping[str, tuple[int, int]],
              taken: pl.DataFrame | None, *, write: bool = True) -> tuple[pl.DataFrame, int]:
    """record_id -> proc_id: kept where allocated before, new ones from each modality's range (one transaction);
    `taken`: the ids of the site's procedure_occurrence.csv (id, linkage: of concept 4180938 or 4141651)."""
    known = manifest.query_frame("SELECT record_id, modality, proc_id FROM registry WHERE proc_id IS NOT NULL",
                                 schema={"record_id": pl.Int64, "modality": pl.String, "proc_id": pl.Int64})
    if taken is not None:
        # The ids this manifest gave are the registries' own: a site that made PROCEDURE_OCCURRENCE rows of them
        # (as Multimodal-Linkage asks) has them in its table; only the others clash
        taken = taken.filter(~pl.col("id").is_in(known["proc_id"].implode()))
        others = []
        for modality, (first, last) in ranges.items():
            clash = taken.filter(pl.col("id").is_between(first, last))
            ehr, links = clash.filter(~pl.col("linkage"))["id"], clash.filter(pl.col("linkage"))["id"]
            if ehr.len():
                raise UsageError(
                    f"procedure_occurrence.csv already uses ids in the {modality.lower()[:-1]} registry range "
                    f"{first}-{last} (e.g. {ehr[0]}) for the site's own procedures (rows whose procedure_concept_id is "
                    "neither 4180938 Imaging nor 4141651 Monitoring), which the linkage procedure's proc_ids must not "
                    "overlap; nothing was written", where="[registry] in chorus.toml",
                    fix="set image_proc_ids / waveform_proc_ids to ranges the site's own procedure ids do not use")
            if links.len():
                others.append((modality, first, last, links))
        # Linkage rows (4180938 / 4141651) of ids this manifest never gave: refused as "the site's own procedure
        # ids", which sent a site to look for EHR procedures it did not have; new ids would repeat theirs. Told for
        # every range at once (the waveform range's rows were told only once the image range's were removed), with
        # the manifest that gave them first among the ways out (a new manifest of a site: "remove those rows, run"
        # did not say the old manifest keeps those ids, nor which run)
        if others:
            n = sum(links.len() for *_, links in others)
            where = "; ".join(f"{plural(links.len(), 'row')} in the {modality.lower()[:-1]} range {first}-{last}, "
                              f"e.g. {links[0]}" for modality, first, last, links in others)
            raise UsageError(
                f"procedure_occurrence.csv already holds {plural(n, 'linkage row')} (procedure_concept_id 4180938 "
                f"Imaging or 4141651 Monitoring) with ids in the registry ranges that this manifest never gave "
                f"({where}): procedure rows made from another registry (one `chorus-batch registry --omop` wrote with "
                "another manifest, or the site's own, typed in or made by its scripts), whose ids the proc_ids given "
                "now would repeat; nothing was written",
                where="OMOP/procedure_occurrence.csv",
                fix="if another manifest of this site gave those ids, write the registries with it (`chorus-batch "
                    "registry --db <that manifest>`): it keeps them; if the site's own registries made the rows, "
                    "keep shipping those registries instead of this tool's; to ship this tool's instead, remove those "
                    "rows from OMOP/procedure_occurrence.csv, record the change (`chorus-batch run`), then write the "
                    "registries with `chorus-batch registry --omop` and add the rows of the procedure_occurrence.csv "
                    "it writes to the site's")
    fresh = records.join(known, on="record_id", how="anti").sort("record_id")
    allocated = []
    for modality, (first, last) in ranges.items():
        mine = fresh.filter(pl.col("modality") == modality)
        if mine.height == 0:
            continue
        # (with the ids given just now to the modality before: two ranges that share ids, `[registry]` written with
        # the same first id twice, gave an image accession and a waveform session one proc_id, and `registry` failed
        # with exit 3, "UNIQUE constraint failed: registry.proc_id ... report it")
        given = pl.concat([known["proc_id"], *(part["proc_id"] for part in allocated)])
        used = given.filter(given.is_between(first, last))
        start = int(used.max()) + 1 if used.len() else first  # type: ignore[arg-type]
        if start + mine.height - 1 > last:
            raise UsageError(f"the {modality.lower()} proc_id range {first}-{last} is used up", where="[registry]",
                             fix="widen the range in chorus.toml (ids already given are kept)")
        allocated.append(mine.select("record_id", proc_id=pl.int_range(start, start + mine.height, dtype=pl.Int64)))
    new = pl.concat(allocated) if allocated else pl.DataFrame(schema={"record_id": pl.Int64, "proc_id": pl.Int64})
    if new.height and not write:
        raise _WouldWrite
    if new.height:
        with manifest.adbc() as con:
            with con.cursor() as cur:
                cur.adbc_ingest("_proc", new.to_arrow(), mode="create", temporary=True)
                cur.execute("UPDATE registry SET proc_id = p.proc_id FROM temp._proc p WHERE registry.record_id = p.record_id")
            con.commit()
        manifest.after_commit()
    return pl.concat([known.select("record_id", "proc_id"), new]), new.height


def build_registries(manifest: Manifest, sources: Mapping[int | None, Source], *, version: str | None = None,
                     ranges: Mapping[str, tuple[int, int]], workers: int = 1,
                     progress: Progress | None = None, write: bool = True, reader: SQLiteReader | None = None) -> Registries:
    """The registries of a version (default: the latest). Call under the manifest's lock: it allocates proc_ids
    and records the headers it reads; `write=False` (no lock needed) raises _WouldWrite where it would. `reader`: one
    kept across calls, which reads the version's file list once (it keeps the set it read)."""
    from .review import SQLiteReader

    reader = reader or SQLiteReader(manifest.path)
    label = reader.resolve(version)
    files = reader.files(label)
    listed = files.filter(registry_listed() & pl.col("record_id").is_not_null())
    # Multimodal-Linkage: a row per file of the Images and Waveforms folders; one that fits no layout has no session or
    # accession (no group_id, no proc_id) and no row: told, never left out without a word
    left_out = (files.filter(pl.col("modality").is_in(["Waveforms", "Images"])
                             & ~pl.col("srcfile").str.contains(RECORDS_NAME))
                .join(listed, on="srcfile", how="anti"))
    # person_id is an integer (Multimodal-Linkage: "DATATYPE: integer or bigint", the person folder's name; [0-9], as
    # validate's person.id_format), and a group_id a spreadsheet would run as a formula (=, +, -, @, a tab or CR first)
    # is no session or accession name a site opening its registry in Excel can keep: a folder named =1+2, +cmd, -rf or
    # @x was written into person_id, group_id and trg_file, exit 0 (or 1 for person.csv), run as a formula when opened.
    # Those files have no row (nor proc_id, nor procedure): told by folder, as files that fit no layout are
    unfit = ~pl.col("person_id").str.contains(r"^[0-9]+$") | pl.col("session_id").str.contains(r"^[=+\-@\t\r]")
    refused = listed.filter(unfit)
    linked = listed.filter(~unfit)
    compressed = left_out.filter(pl.col("srcfile").str.contains(COMPRESSED_NAME))["srcfile"].sort()
    left_out = left_out.filter(~pl.col("srcfile").str.contains(COMPRESSED_NAME))["srcfile"].sort()
    omop = files.select("srcfile", "root_id", "size", "mtime_ns", "etag", "md5")
    # Capture times: DICOM headers per file; WFDB base date/time of the record's headers.
    dicom = linked.filter((pl.col("modality") == "Images") & pl.col("srcfile").str.to_lowercase().str.ends_with(".dcm"))
    waves = linked.filter(pl.col("modality") == "Waveforms")
    headers = waves.filter(pl.col("srcfile").str.to_lowercase().str.ends_with(".hea"))
    edf = waves.filter(pl.col("srcfile").str.to_lowercase().str.contains(r"\.(edf|bdf)$"))
    if not write:  # proc_ids to allocate: said before the headers' facts and the site's visits are read (all read
        # again under the lock: the facts of 100k files and their capture times were read twice by a first registry)
        _allocate(manifest, linked.select("record_id", "modality").unique(), ranges, None, write=False)
    facts, unread = _facts(manifest, [(dicom, KIND_DICOM), (headers, KIND_WFDB), (edf, KIND_EDF)], sources, workers,
                           progress, write=write, label=label)
    warnings = _unread_warning(unread, label)
    if left_out.len():
        warnings.append(
            f"{plural(left_out.len(), 'waveform or image file')} of version {label} {'has' if left_out.len() == 1 else 'have'} no row in the "
            "registries, which the "
            "linkage procedure asks to list every file: they fit no layout of the procedures, so they have no session or "
            f"accession to group them (e.g. {', '.join(left_out.head(3).to_list())}; `chorus-batch validate` says why for "
            "each). Move or rename them "
            "to <person_id>/Waveforms/<Telemetry|EEG>/<session_id>/<session_id>[...].<ext> or <person_id>/Images/"
            "<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm, run, and write the registries again")
    warnings += _refused_names(refused, label)
    if compressed.len():
        warnings.append(
            f"{plural(compressed.len(), 'compressed waveform or image file')} of version {label} "
            f"{'has' if compressed.len() == 1 else 'have'} no row in the registries "
            f"(e.g. {', '.join(compressed.head(3).to_list())}): the procedures ask for the files themselves, and a "
            "registry row names a file to deliver. Decompress them in place (e.g. gunzip) and remove the compressed "
            "copies, run, and write the registries again")
    image_times = dicom.select("srcfile", "md5").join(_header_time(facts, KIND_DICOM), on="md5").select("srcfile", "_when",
                                                                                                   "_day_only")
    # A record's time: its WFDB or EDF header named after the session (the master of a multi-segment record), else
    # its earliest.
    record_times = (
        pl.concat([headers.join(_header_time(facts, KIND_WFDB), on="md5"),
                   edf.join(_header_time(facts, KIND_EDF), on="md5")]).drop_nulls("_when")
        .with_columns(_main=pl.col("srcfile").str.split("/").list.last().str.replace(r"\.[^.]*$", "")
                      == pl.col("session_id"))
        .sort(["record_id", "_main", "_when"], descending=[False, True, False])
        .unique("record_id", keep="first").select("record_id", pl.col("_when").alias("_record_when"))
    )
    path_time = pl.concat_str("start_date", pl.lit(" "), "start_time").str.strptime(pl.Datetime, STAMP, strict=False)
    rows = (
        linked.join(image_times, on="srcfile", how="left").join(record_times, on="record_id", how="left")
        .with_columns(_when=pl.coalesce("_when", "_record_when", path_time))
    )
    # An earlier version's OMOP table that a later version removed is not on the site: read, it stopped the registry
    # (exit 2, "if the site moved, pass --site") for good. Its visits are not known; the rows are written without them
    removed = {table: _removed_since(manifest, omop, table)
               for table in ("visit_occurrence", "procedure_occurrence", "person")}
    omop = omop.filter(~pl.col("srcfile").is_in([path for path in removed.values() if path is not None]))
    visits, undated_visits, zoned_visits = _visits(omop, sources)
    rows = _with_visits(rows, visits)
    # A datetime with a time zone (2020-01-01T08:00:00Z, a database export's UTC) was read as that clock time without a
    # word: the capture times are the headers' clock, the site's local time, so such a visit is off by the zone's
    # offset and a file near its start or end took the neighbouring visit (or none)
    zoned_visits, examples = _of_registry_persons(zoned_visits, rows)
    if zoned_visits.height:
        # the rows whose visit_id the zone decides (captured within a zone's reach, 14 hours, of such a visit's start or
        # end), named: the warning said which visits only, leaving the site to find the files it put in doubt
        reach = pl.duration(hours=14)
        near = (rows.select("srcfile", "_when", _person=_norm(pl.col("person_id"))).drop_nulls("_when")
                .join(zoned_visits.select("_person", "_start", "_end"), on="_person")
                .filter(((pl.col("_when") - pl.col("_start")).abs() <= reach)
                        | ((pl.col("_when") - pl.col("_end")).abs() <= reach))
                ["srcfile"].unique().sort())
        doubt = (f"; {plural(near.len(), 'registry row')} {'was' if near.len() == 1 else 'were'} captured within 14 "
                 f"hours of such a start or end, where the zone decides the visit_id (e.g. "
                 f"{', '.join(near.head(3).to_list())})" if near.len() else
                 "; no registry row was captured within 14 hours of such a start or end, so no visit_id is in doubt")
        warnings.append(
            f"{plural(zoned_visits.height, 'visit')} of persons with registry rows in OMOP/visit_occurrence.csv "
            f"{'has' if zoned_visits.height == 1 else 'have'} a start or end datetime with a time zone (e.g. "
            f"{examples}): {ZONE_DROPPED}{doubt}. Write visit_occurrence's datetimes in the site's local time without "
            "a zone, run, and write the registries again")
    # A visit whose start or end the table gives in no form read here (01/07/2020, 20200107, empty) encloses no file:
    # the files it holds had an empty visit_id, exit 0, without a word
    undated_visits, examples = _of_registry_persons(undated_visits, rows)
    if undated_visits.height:
        warnings.append(
            f"{plural(undated_visits.height, 'visit')} of persons with registry rows in OMOP/visit_occurrence.csv "
            f"{'has' if undated_visits.height == 1 else 'have'} a start or end that is not a date (yyyy-mm-dd) or "
            f"datetime (yyyy-mm-dd hh:mm:ss), or an end before the start (e.g. {examples}): no file's datetime is "
            "found within "
            f"{'it' if undated_visits.height == 1 else 'them'}, so files captured during "
            f"{'it' if undated_visits.height == 1 else 'them'} have an empty visit_id (and the procedures an empty "
            "visit_occurrence_id). Write visit_start_date and visit_end_date (OMOP requires both) as yyyy-mm-dd, the end "
            "not before the start, run, "
            "and write the registries again")
    if removed["visit_occurrence"] is not None and rows.height:
        warnings.append(f"{removed['visit_occurrence']} of version {label} is no longer on the site (a later version "
                        "removed it): its visits cannot be read, so every visit_id, and the procedures' "
                        "visit_occurrence_id, is empty (the manifest keeps a table's checksum, not its content)")
    if _omop_rows(omop, "visit_occurrence").height == 0 and removed["visit_occurrence"] is None and rows.height:
        # (every visit_id was empty, exit 0, without a word: read as "no visit of the person encloses the file", which
        # the procedure's NULL means, when no visit was looked at)
        warnings.append(f"version {label} has no OMOP/visit_occurrence.csv: the visits the linkage procedure infers "
                        "each file's visit_id from (the person's visit whose start and end enclose its capture time) "
                        "are not known, so every visit_id, and the procedures' visit_occurrence_id, is empty. Put the "
                        "site's VISIT_OCCURRENCE table in OMOP/visit_occurrence.csv, run, and write the registries again")
    # Multimodal-Linkage: person_id references the PERSON table. A person folder without a person.csv row gave rows
    # (and --omop procedures) of a person OMOP does not have, exit 0, without a word; validate's registry.unknown_person
    # refused the registry once shipped
    try:
        people = _read_omop(omop, "person", ["person_id"], sources) if rows.height else None
    except UsageError as exc:  # (the registries do not need the table: told, not refused)
        people = None
        warnings.append(f"the registry rows' persons were not looked up in OMOP/person.csv: {exc.what}; "
                        f"{exc.fix or 'fix the table'}, then write the registries again")
    if people is not None:
        strangers = (rows.select("person_id").unique()
                     .join(people.select(_person=_norm(pl.col("person_id"))).drop_nulls(),
                           left_on=_norm(pl.col("person_id")), right_on="_person", how="anti")["person_id"].sort())
        if strangers.len():
            warnings.append(
                f"{plural(strangers.len(), 'person folder')} with registry rows of version {label} "
                f"{'has' if strangers.len() == 1 else 'have'} no row in OMOP/person.csv (e.g. "
                f"{', '.join(f'{p}/' for p in strangers.head(3).to_list())}): the linkage procedure's person_id "
                "references the PERSON table, and `validate` refuses such rows in a shipped registry "
                "(registry.unknown_person). Add the persons to OMOP/person.csv (or fix the folder names), run, and "
                "write the registries again")
        # matched only through an id person.csv writes as a decimal (3.0): validate refuses that table's ids
        # (person.no_omop_row) and so the shipped rows (registry.unknown_person); said nothing, exit 0
        written = people.select(_person=pl.col("person_id").cast(pl.String).str.strip_chars().str.strip_chars('"'))
        decimal = (rows.select("person_id").unique()
                   .join(written.filter(pl.col("_person").str.contains(r"^\d+\.0*$"))
                         .with_columns(_as=_norm(pl.col("_person"))), left_on=_norm(pl.col("person_id")),
                         right_on="_as", how="inner")
                   .join(written.filter(~pl.col("_person").str.contains(r"^\d+\.0*$")).select(_as=_norm(pl.col("_person"))),
                         left_on=_norm(pl.col("person_id")), right_on="_as", how="anti")
                   .sort("person_id"))
        if decimal.height:
            shown = ", ".join(f"{p}/ as {w}" for p, w in decimal.select("person_id", "_person").head(3).rows())
            warnings.append(
                f"{plural(decimal.height, 'person folder')} with registry rows of version {label} "
                f"{'is' if decimal.height == 1 else 'are'} in OMOP/person.csv only as a decimal ({shown}): OMOP's "
                "person_id is an integer, and `validate` refuses such rows in a shipped registry "
                "(registry.unknown_person). Write person.csv's person_ids as integers, run, and write the registries "
                "again")
    changed = _not_as_recorded(omop, "visit_occurrence", sources)
    if changed is not None and rows.height:
        warnings.append(f"{changed} is no longer as version {label} recorded it (written since): visit_id, and the "
                        "procedures' visit_occurrence_id, come from the table as it is now. For the latest version, run "
                        "`chorus-batch run` (it records the change) and write the registries again; an earlier "
                        "version's table is no longer on the site")
    taken = _read_omop(omop, "procedure_occurrence", ["procedure_occurrence_id", "procedure_concept_id"], sources)
    taken_ids = (taken.select(id=_norm(pl.col("procedure_occurrence_id")).cast(pl.Int64, strict=False),
                              linkage=_norm(pl.col("procedure_concept_id")).is_in(LINKAGE_CONCEPTS).fill_null(False))
                 .drop_nulls("id") if taken is not None else None)
    proc_ids, n_new = _allocate(manifest, rows.select("record_id", "modality").unique(), ranges, taken_ids, write=write)
    if taken_ids is not None:
        warnings += _procedures_without_rows(manifest, taken_ids, proc_ids.join(rows.select("record_id").unique(),
                                                                                on="record_id"), label)
    warnings += _renamed_persons(manifest, proc_ids.join(rows.select("record_id").unique(), on="record_id"), label)
    first_ids = manifest.query_frame(
        "SELECT srcfile, min(file_id) AS file_id FROM source_files WHERE srcfile IN (SELECT srcfile FROM source_files "
        "WHERE version_valid <= ? AND (version_invalid IS NULL OR version_invalid > ?)) GROUP BY srcfile",
        (label, label), schema={"srcfile": pl.String, "file_id": pl.Int64})
    # where the files are now: a root given again (--site, the site moved) is the location read, not the recorded one
    # (src_file named the old folder, which may hold nothing any more, exit 0, without a word)
    locations = manifest.roots().select("root_id", "location").with_columns(
        location=pl.col("root_id").replace_strict(
            {root_id: source.location for root_id, source in sources.items() if root_id is not None},
            default=pl.col("location"), return_dtype=pl.String))
    out = (
        rows.drop("file_id").join(first_ids, on="srcfile", how="left").join(proc_ids, on="record_id", how="left")
        .join(locations, on="root_id", how="left")
        .with_columns(
            group_id=pl.col("session_id"),
            datetime=pl.col("_when").dt.strftime(STAMP),
            src_file=pl.when(pl.col("location").is_not_null()).then(pl.col("location") + "/" + pl.col("srcfile"))
            .otherwise(pl.col("srcfile")),
            trg_file=pl.col("srcfile"),
        )
        .sort("srcfile")
    )
    # Multimodal-Linkage: datetime, the capture time, is what the visit is inferred from; the Imaging SOP's registry has
    # it NOT NULL, and OMOP's procedure_date is required (validate's registry.values warns of an empty one in either
    # registry). Rows without one are told (those of headers not read as the version recorded them are told above):
    # DICOM files by file; waveform files by session, whose record gives the time (a WFDB header's base date and time
    # are optional in WFDB, an EDF+ header may say "Startdate X", and other formats' start times are not read)
    undated = (out.filter(pl.col("_when").is_null() & pl.col("srcfile").is_in(dicom["srcfile"].implode()))
               .join(unread, on="srcfile", how="anti")["srcfile"])
    if undated.len():
        warnings.append(
            f"{plural(undated.len(), 'image registry row')} of version {label} {'has' if undated.len() == 1 else 'have'} no capture time "
            "(e.g. "
            f"{', '.join(undated.head(3).to_list())}): their DICOM header gives no acquisition, content, series or study "
            "date (or cannot be read as DICOM: `chorus-batch validate` says so). Their datetime and visit_id are empty, "
            "and so is the procedure_date of an accession none of whose files has one (--omop), though the procedures "
            "want them (the Imaging SOP's datetime is NOT NULL, OMOP's procedure_date is required): keep those dates "
            "and times when de-identifying, run, and write the registries again")
    day_only = out.filter(pl.col("_day_only").fill_null(False))["srcfile"]
    if day_only.len():
        warnings.append(
            f"{plural(day_only.len(), 'image registry row')} of version {label} {'has' if day_only.len() == 1 else 'have'} "
            f"a capture date without a time (e.g. {', '.join(day_only.head(3).to_list())}): their DICOM header gives "
            "an acquisition, content, series or study date but none of those with its time, so their datetime is that "
            "day's 00:00:00, and visit_id the visit enclosing that midnight, which may not be the visit of the "
            "capture. Keep the times (AcquisitionTime, StudyTime) when de-identifying, run, and write the registries "
            "again; or check datetime and visit_id of those rows before shipping the registry")
    session_folder = pl.col("srcfile").str.extract(r"^(.*)/[^/]+$")
    undated_waves = (
        out.filter(pl.col("_when").is_null() & (pl.col("modality") == "Waveforms")).with_columns(_folder=session_folder)
        .join(unread.select(_folder=session_folder), on="_folder", how="anti")  # (a header unread is told above)
    )
    if undated_waves.height:
        folders = undated_waves["_folder"].unique().sort()
        warnings.append(
            f"{plural(undated_waves.height, 'waveform registry row')} of {plural(folders.len(), 'session')} of version "
            f"{label} {'has' if undated_waves.height == 1 else 'have'} no "
            f"capture time (e.g. {', '.join(f'{folder}/' for folder in folders.head(3).to_list())}): no WFDB header of the session gives a base "
            "date and time, nor an EDF header a start date (EDF+'s \"Startdate X\"), and the start time of other "
            "formats (CSV, HDF5) is not read by this tool. Their datetime "
            "and visit_id are empty, and so is their procedure's procedure_date (--omop), though the linkage procedure "
            "infers the visit from that time and OMOP requires procedure_date: write the base date and time in the "
            "record's WFDB (or EDF) header (shifted as the site's other dates), run, and write the registries again; or fill in "
            "datetime and visit_id in waveform_registry.csv (and the procedure's date) before shipping it")
    # A file of a version an older release committed, ended before the upgrade's first run recorded the roots, has no
    # root: its src_file is its site-relative path, which beside the others' root + path was written without a word
    rootless = out.filter(pl.col("location").is_null())["srcfile"]
    if rootless.len():
        warnings.append(
            f"{plural(rootless.len(), 'registry row')} of version {label} {'has' if rootless.len() == 1 else 'have'} a "
            f"src_file without the site's root (e.g. {', '.join(rootless.head(3).to_list())}): the release that "
            f"recorded {'it' if rootless.len() == 1 else 'them'} kept no root (schema before 3), so src_file is the path in "
            "the site, as trg_file is; "
            "put the root the site had then in front of it before shipping the registry")
    waveforms = out.filter(pl.col("modality") == "Waveforms").select(REGISTRY_COLUMNS)
    # The Imaging SOP's image_registry leaves trg_file to the centre ("leave blank or null"); the path is in src_file.
    # image_registry_id, its AUTO_INCREMENT primary key, is the file's file_id (the same while the path lives), the rows
    # in that order, new files last: as the row's number in path order, a file added under a folder sorting first, or
    # one removed, renumbered every row after it between two registries of the site
    images = out.filter(pl.col("modality") == "Images").with_columns(trg_file=pl.lit(None, pl.String)).sort(
        "file_id").select(pl.col("file_id").alias("image_registry_id"), *REGISTRY_COLUMNS)
    folder = pl.col("srcfile").str.extract(r"^(.*)/[^/]+$")
    procedures = (
        out.group_by("proc_id").agg(
            pl.col("person_id").first(), pl.col("modality").first(), pl.col("group_id").first(),
            # the visit of the earliest capture that has one (the files' order by path is not their order in time)
            pl.col("_when").min(), pl.col("visit_id").sort_by("_when", nulls_last=True).drop_nulls().first(),
            folder.min().alias("_first"), folder.max().alias("_last"))
        .pipe(lambda frame: frame.with_columns(_folder=_group_folder(frame)))
        .sort("proc_id")
        .select(
            procedure_occurrence_id="proc_id", person_id="person_id",
            procedure_concept_id=pl.when(pl.col("modality") == "Images").then(IMAGING_PROCEDURE).otherwise(MONITORING_PROCEDURE),
            procedure_date=pl.col("_when").dt.strftime("%Y-%m-%d"), procedure_datetime=pl.col("_when").dt.strftime(STAMP),
            procedure_type_concept_id=pl.lit(STANDARD_ALGORITHM), visit_occurrence_id="visit_id",
            procedure_source_value=fmt("path: {}, group: {}", pl.col("_folder"), pl.col("group_id")))
    )
    log.debug(f"registries: {waveforms.height} waveform and {images.height} image rows, {n_new} new proc_ids")
    return Registries(version=label, waveforms=waveforms, images=images, procedures=procedures, new_proc_ids=n_new,
                      warnings=warnings)


def _renamed_persons(manifest: Manifest, given: pl.DataFrame, label: str) -> list[str]:
    """What the registries of `label` say of procedures (record_id, proc_id `given`) whose session or accession another
    record of the manifest holds under a person folder spelt otherwise, the same OMOP person (000101 and 101): a
    proc_id is kept per record, and a record per folder name, so the renamed folder's procedures were given new
    proc_ids, exit 0, without a word, and procedure rows made from the earlier registries name ids no registry lists."""
    records = manifest.query_frame(
        "SELECT record_id, modality, person_id, session_id, category, proc_id FROM registry WHERE proc_id IS NOT NULL "
        "AND person_id IS NOT NULL AND session_id IS NOT NULL",
        schema={"record_id": pl.Int64, "modality": pl.String, "person_id": pl.String, "session_id": pl.String,
                "category": pl.String, "proc_id": pl.Int64}).with_columns(_person=_norm(pl.col("person_id")))
    mine = records.join(given.select("record_id"), on="record_id", how="semi")
    others = records.join(given.select("record_id"), on="record_id", how="anti")
    pairs = (mine.join(others, on=["modality", "_person", "session_id", "category"], nulls_equal=True, suffix="_other")
             .filter(pl.col("person_id") != pl.col("person_id_other")))
    # Told where the ids differ from those of another time: this version's id replaced one given before it (the folder
    # renamed since), or the other spelling's files are in a later version (renamed after this one). A folder renamed
    # and then renamed back has its first ids again, as every version after it does: it was told at every later run,
    # for good, though nothing is left to mend
    first_later = manifest.query_frame("SELECT min(label) AS label FROM versions WHERE label > ?", (label,),
                                       schema={"label": pl.String})["label"][0]
    later = pl.Series("record_id", [], pl.Int64)
    if first_later is not None and pairs.height:
        others_ids = ",".join(str(int(i)) for i in pairs["record_id_other"].unique().to_list())
        later = manifest.query_frame(
            f"SELECT DISTINCT record_id FROM source_files WHERE record_id IN ({others_ids}) AND (version_invalid IS "
            "NULL OR version_invalid > max(version_valid, ?))", (first_later,), schema={"record_id": pl.Int64})["record_id"]
    pairs = pairs.filter((pl.col("proc_id_other") < pl.col("proc_id"))
                         | pl.col("record_id_other").is_in(later.implode())).sort("proc_id")
    if pairs.height == 0:
        return []
    examples = "; ".join(f"{'/'.join(filter(None, (person, modality, category, session)))} is {proc} here, {other}/ had {old}"
                         for person, modality, category, session, proc, other, old in pairs.head(3).select(
                             "person_id", "modality", "category", "session_id", "proc_id", "person_id_other",
                             "proc_id_other").iter_rows())
    n = pairs["record_id"].n_unique()
    return [f"{plural(n, 'procedure')} of version {label} {'has' if n == 1 else 'have'} a proc_id other than the one the "
            "manifest gave the same session or accession under a person folder named otherwise, the same OMOP person "
            f"(e.g. {examples}): a proc_id is kept per person folder as named, so registries and procedure rows made "
            "before the folder was renamed name other ids for these procedures. Name each person folder as before (or "
            "as the centre already has it), run, and write the registries again; else replace the earlier ids in the "
            "site's procedure_occurrence.csv by these"]


def _procedures_without_rows(manifest: Manifest, taken: pl.DataFrame, given: pl.DataFrame, label: str) -> list[str]:
    """What the registries of `label` say of linkage rows of the site's procedure_occurrence.csv (`taken`: id, linkage)
    whose id is a proc_id the manifest gave a session or accession that has no row in them (`given`: record_id,
    proc_id of the rows): its files removed, or left out (a folder named so that they have no row). The id stays that
    procedure's, never given to another (Multimodal-Linkage: distinct per procedure), but the row was kept, exit 0,
    without a word: a procedure linking no file delivered."""
    ids = taken.filter(pl.col("linkage"))["id"]
    latest = manifest.query_frame("SELECT max(label) AS label FROM versions", schema={"label": pl.String})["label"][0]
    if ids.len() == 0 or label != latest:  # (an earlier version's lacks the rows of sessions added since: no slip)
        return []
    # (the set logic is validate's registry.linkage_without_files' too: frames.linkage_without_rows)
    unlinked = linkage_without_rows(taken, given).collect()["id"]
    records = manifest.query_frame(
        "SELECT record_id, proc_id, person_id, modality, category, session_id FROM registry WHERE proc_id IS NOT NULL",
        schema={"record_id": pl.Int64, "proc_id": pl.Int64, "person_id": pl.String, "modality": pl.String,
                "category": pl.String, "session_id": pl.String})
    stale = records.filter(pl.col("proc_id").is_in(unlinked.implode())).sort("proc_id")
    if stale.height == 0:
        return []
    # A person folder renamed to another person_id (000102 -> 000103): its sessions are that person's now, with new
    # proc_ids; "its files were removed since, or have no row as said above" said neither, nor anything above
    now = records.join(given.select("record_id"), on="record_id", how="semi")
    moved = (stale.join(now, on=["modality", "category", "session_id"], nulls_equal=True, how="left", suffix="_now")
             .filter(pl.col("person_id_now").is_null() | (pl.col("person_id_now") != pl.col("person_id")))
             .unique("proc_id", keep="first", maintain_order=True))
    n_moved = moved["person_id_now"].drop_nulls().len()
    shown = ", ".join(f"{proc} ({'/'.join(filter(None, (person, modality, category, session)))}/"
                      + (f", now under {there}/ as {again}" if there is not None else "") + ")"
                      for proc, person, modality, category, session, there, again in moved.head(3).select(
                          "proc_id", "person_id", "modality", "category", "session_id", "person_id_now",
                          "proc_id_now").iter_rows())
    why = ("its files were removed since, or left out of the registries (see the warnings above, if any)"
           if n_moved == 0 else
           f"{'it is' if stale.height == 1 else ('all are' if n_moved == stale.height else f'{n_moved} are')} now "
           "under another person folder (a person folder renamed: the files are that person's procedures now, under "
           "new proc_ids)" + ("" if n_moved == stale.height else ", the others' files removed or left out"))
    return [f"OMOP/procedure_occurrence.csv holds {plural(stale.height, 'linkage row')} (procedure_concept_id 4180938 "
            f"Imaging or 4141651 Monitoring) of {'a proc_id' if stale.height == 1 else 'proc_ids'} this manifest gave a "
            f"session or accession that has no row in the registries of version {label} (e.g. {shown}): {why}, so "
            "the row is a procedure linking no file delivered. A proc_id stays its procedure's and is never given to "
            "another: remove those rows from procedure_occurrence.csv (or put the files back as they were), record "
            "the change (`chorus-batch run`), and write the registries again with --omop"]


def _refused_names(refused: pl.DataFrame, label: str) -> list[str]:
    """What the registries of `label` say of the files left out for their person folder's or session's (accession's)
    name: one warning per kind of folder, naming the first three."""
    said = []
    persons = refused.filter(~pl.col("person_id").str.contains(r"^[0-9]+$"))
    if persons.height:
        names = persons["person_id"].unique().sort()
        said.append(
            f"{plural(names.len(), 'person folder')} of version {label} {'is' if names.len() == 1 else 'are'} not "
            f"named by an integer person_id (e.g. {', '.join(f'{n}/' for n in names.head(3).to_list())}), so "
            f"{'its' if names.len() == 1 else 'their'} {plural(persons.height, 'waveform or image file')} "
            f"{'has' if persons.height == 1 else 'have'} no row in the registries (nor procedure, --omop): the "
            "linkage procedure's person_id is the folder's name and an integer (a name such as =1+2, +cmd, -rf or @x "
            "is run as a formula by a spreadsheet opening the registry; validate's person.id_format). Rename each "
            "folder to the person's person_id in OMOP/person.csv (and the DICOM PatientID), run, and write the "
            "registries again")
    groups = refused.filter(pl.col("person_id").str.contains(r"^[0-9]+$"))
    if groups.height:
        folders = groups.select(pl.coalesce(  # its folder, else the file's
            _folder_named(pl.col("srcfile"), pl.col("session_id")), pl.col("srcfile").str.extract(r"^(.*)/[^/]+$"))
        ).to_series().unique().sort()
        names = groups["session_id"].unique().sort()
        said.append(
            f"{names.len()} {'session or accession' if names.len() == 1 else 'sessions or accessions'} of version {label} {'is' if names.len() == 1 else 'are'} "
            f"named with =, +, -, @, a tab or a carriage return first (e.g. "
            f"{', '.join(f'{f}/' for f in folders.head(3).to_list())}), which a spreadsheet opening the registry "
            "runs as a formula in group_id, so "
            f"{'its' if names.len() == 1 else 'their'} {plural(groups.height, 'file')} "
            f"{'has' if groups.height == 1 else 'have'} no row in the registries (nor procedure, --omop). Rename the "
            "session (its folder and files) or accession folder without that first character, run, and write the "
            "registries again")
    return said


def _unread_warning(unread: pl.DataFrame, label: str) -> list[str]:
    """What the registries of `label` say of headers that could not be read as the version recorded them."""
    if unread.height == 0:
        return []
    paths = unread["srcfile"].unique().sort()
    return [f"{plural(paths.len(), 'header file')} of version {label} {'is' if paths.len() == 1 else 'are'} no longer as it recorded them (written since, gone "
            f"or unreadable; e.g. {', '.join(paths.head(3).to_list())}): their capture time was not read, so their rows' "
            "datetime (and visit_id) come from the path's stamp, else stay empty. For the latest version, run "
            "`chorus-batch run` (it records the change) and write the registries again; an earlier version's content "
            "is no longer on the site"]


def _group_folder(frame: pl.DataFrame) -> pl.Expr:
    """A procedure's folder: that of its session or accession (group_id), where a folder of its files' paths is
    named so (an accession's, not the first of its series folders); else the folder that holds all its files."""
    return pl.coalesce(_folder_named(pl.col("_first") + "/", pl.col("group_id")), _common_folder(frame, "_first", "_last"))


def _folder_named(path: pl.Expr, name: pl.Expr) -> pl.Expr:
    """The part of `path` up to its first folder called `name`, below the first part (never the person folder); null
    where no folder of it is."""
    at = path.str.find("/" + name + "/", literal=True)
    return pl.when(at.is_not_null()).then(path.str.slice(0, at + 1 + name.str.len_chars()))


def _common_folder(frame: pl.DataFrame, first: str, last: str) -> pl.Expr:
    """The folder holding all the files, from the first and last of their folders in sorted order (any part they
    share, every folder between shares)."""
    a, b = pl.col(first).str.split("/"), pl.col(last).str.split("/")
    depth = int(frame[first].str.count_matches("/").max() or 0) + 1  # the parts of the deepest folder
    shared, run = pl.lit(0, pl.Int32), pl.lit(True)
    for k in range(depth):
        run = run & (a.list.get(k, null_on_oob=True) == b.list.get(k, null_on_oob=True)).fill_null(False)
        shared = shared + run.cast(pl.Int32)
    return a.list.head(shared).list.join("/")


def _filled_by_hand(out: Path, registries: Registries, earlier: Mapping[str, pl.DataFrame | None]) -> list[str]:
    """A warning for each registry in `out` about to be replaced whose rows give a datetime or visit_id where the new
    rows of the same file_id have none: filled in by hand (as the undated-session warning suggests), they were lost
    without a word when the registries were written again."""
    said = []
    for name, frame in (("waveform_registry.csv", registries.waveforms), ("image_registry.csv", registries.images)):
        path = out / name
        old = _with_columns(earlier[name], ["file_id", "datetime", "visit_id"])
        if old is None:  # (none there, or not one to compare: it is replaced as before)
            continue
        old = old.select(
            pl.col("file_id").str.strip_chars(), pl.col("datetime").str.strip_chars().alias("_old_datetime"),
            pl.col("visit_id").str.strip_chars().alias("_old_visit_id"))
        lost = (frame.select(pl.col("file_id").cast(pl.String), "datetime", "visit_id").join(old, on="file_id")
                .unpivot(index=["file_id", "datetime", "visit_id"], on=["_old_datetime", "_old_visit_id"],
                         variable_name="_column", value_name="_was")
                .with_columns(_column=pl.col("_column").str.strip_prefix("_old_"))
                .filter((pl.col("_was").fill_null("") != "")
                        & pl.when(pl.col("_column") == "datetime").then(pl.col("datetime").is_null())
                        .otherwise(pl.col("visit_id").is_null()))
                .sort(pl.col("file_id").cast(pl.Int64, strict=False), "_column"))
        if lost.height:
            shown = "; ".join(f"file_id {i}: {c} {w!r}" for i, c, w in lost.head(3).select(
                "file_id", "_column", "_was").iter_rows())
            said.append(
                f"{path} had a datetime or visit_id in {plural(lost['file_id'].n_unique(), 'row')} where the registry "
                f"written now has none (e.g. {shown}), values filled in by hand perhaps: those cells are empty now. "
                "Fill them in again before shipping the registry, or give the headers (or visits) those values, run, "
                "and write the registries again")
    return said


def write_registries(registries: Registries, out: str | Path, *, omop: bool = False) -> list[Path]:
    """DIR/waveform_registry.csv, DIR/image_registry.csv (and DIR/procedure_occurrence.csv), owner-only."""
    folder = private_folder(out)
    parts = {"waveform_registry.csv": registries.waveforms, "image_registry.csv": registries.images}
    if omop:
        parts["procedure_occurrence.csv"] = registries.procedures
    # together: a run killed (or a disk filled) between two files left one version's waveform registry beside another
    # version's image registry and procedures, with nothing to tell them apart
    return write_private_together({folder / name: frame.write_csv().encode("utf-8") for name, frame in parts.items()})


def _refuse_site_table(manifest: Manifest, target: Path) -> None:
    """A UsageError when `target` is an OMOP table of the site the manifest tracks: `--out <site>/OMOP --omop` replaced
    the site's own procedure_occurrence.csv (its EHR procedures) by the registries' procedures, exit 0."""
    if not os.path.lexists(target):
        return
    tracked = manifest.query_frame(
        "SELECT r.location, s.srcfile FROM source_files s JOIN roots r ON r.root_id = s.root_id WHERE s.time_invalid IS "
        "NULL AND s.modality = 'OMOP' AND r.location NOT LIKE '%://%' AND lower(s.srcfile) LIKE '%procedure_occurrence.csv'",
        schema={"location": pl.String, "srcfile": pl.String})
    for location, srcfile in tracked.iter_rows():
        with contextlib.suppress(OSError):
            if os.path.samefile(target, Path(location) / srcfile):
                raise UsageError(f"--out {target.parent} holds the site's own {srcfile}, its EHR procedures, which "
                                 "`registry --omop` would replace by the registries' procedures alone; nothing was written",
                                 where=str(target), fix="give an --out folder outside the site (e.g. --out release/), "
                                                        "then add its rows to the site's procedure_occurrence.csv")


def _read_registry(path: Path) -> pl.DataFrame | None:
    """A registry already in --out (every column, as text, named in lower case), split by the delimiter its header row
    is (a spreadsheet saves semicolons in much of Europe; its BOM and CRLF read too); None without the file or with a
    column named twice. Read as comma-delimited, a semicolon-saved registry had no columns: the site's own was replaced
    without a word, and the values filled in by hand were lost without the warning. UTF-16 that begins with its
    byte-order mark (a spreadsheet's "Unicode Text", tab-delimited; Windows PowerShell 5's `>`) is read too, as the
    mark makes it unambiguous: it was refused as unreadable (its rows could not be compared); it is replaced by the
    UTF-8 CSV `registry` writes, its rows compared as a UTF-8 one's are. Without the mark it is still refused."""
    import io

    from .validate.readers import BadContent, _csv_header

    try:
        source: Path | io.BytesIO = path
        with open(path, "rb") as f:
            if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):  # (UnicodeDecodeError, cut short: a ValueError, unreadable)
                source = io.BytesIO(path.read_bytes().decode("utf-16").encode("utf-8"))
            f.seek(0)
            delimiter = _csv_header(source if isinstance(source, io.BytesIO) else f)[0]["delimiter"]
        if isinstance(source, io.BytesIO):
            source.seek(0)
        frame = pl.read_csv(source, infer_schema=False, encoding="utf8-lossy", separator=delimiter or ",")
    except (OSError, BadContent, pl.exceptions.PolarsError, ValueError):
        return None
    frame.columns = [c.lstrip("\ufeff").strip().strip('"').strip().lower() for c in frame.columns]
    return frame if len(set(frame.columns)) == frame.width else None


def _earlier_registries(out: Path) -> dict[str, pl.DataFrame | None]:
    """The registries already in `out`, each read once (its proc_ids, and the values and rows added by hand, are
    compared with those read: each was read three times, a million-row registry ~0.5 s each)."""
    return {name: _read_registry(out / name) for name in ("waveform_registry.csv", "image_registry.csv")}


def _with_columns(frame: pl.DataFrame | None, columns: list[str], *, every: bool = False) -> pl.DataFrame | None:
    """These columns of an earlier registry (every column with `every`); None without it or one of the columns."""
    if frame is None or not set(columns) <= set(frame.columns):
        return None
    if frame.width:  # (an empty line, or one a spreadsheet saves as ",,,,": no row anyone typed in)
        frame = frame.filter(~pl.all_horizontal(pl.all().str.strip_chars().fill_null("") == ""))
    return frame if every else frame.select(columns)


def _refuse_open_in_a_spreadsheet(out: Path, omop: bool) -> None:
    """A UsageError when a file `registry` writes in `out` is open in a spreadsheet, as its lock file says
    (LibreOffice's .~lock.<name>#, Excel's ~$<name>): replaced under it, the next save there put the old rows (and
    the edits) back over the new registry, or the edits were lost when the spreadsheet saw the file change."""
    names = ["waveform_registry.csv", "image_registry.csv"] + (["procedure_occurrence.csv"] if omop else [])
    for name in names:
        for lock in (f".~lock.{name}#", f"~${name}", f"~${name[2:]}"):
            if os.path.lexists(out / lock):
                raise UsageError(f"{out / name} is open in a spreadsheet (its lock file {lock} is beside it), which "
                                 "would save its copy over the registries written now; nothing was written",
                                 where=str(out / lock),
                                 fix="save your changes there and close the file, then write the registries again "
                                     "(changes to rows are told then); if no spreadsheet has it open (one that "
                                     f"crashed), remove {out / lock}")


def _refuse_unreadable_registries(out: Path, earlier: Mapping[str, pl.DataFrame | None]) -> None:
    """A UsageError when `out` holds a waveform or image registry with rows that cannot be read as one (saved as
    UTF-16 without its byte-order mark, or another table under the name, without file_id): replaced, its rows,
    added by hand perhaps, were gone, exit 0, without a word, as no row of it could be compared."""
    for name in ("waveform_registry.csv", "image_registry.csv"):
        path = out / name
        try:
            if not path.is_file() or path.stat().st_size == 0:
                continue
        except OSError:
            continue  # (writing there says what is wrong)
        if _with_columns(earlier[name], ["file_id"]) is not None:
            continue
        whole = _with_columns(earlier[name], [], every=True)
        if whole is not None and whole.height == 0:
            continue  # (a header alone: no row to lose)
        raise UsageError(f"--out {out} holds {name}, which cannot be read as a registry (not CSV text in UTF-8, or "
                         "UTF-16 with a byte-order mark, with a file_id column: saved as UTF-16 without a byte-order mark, perhaps, or another table); "
                         "`registry` would replace it without comparing its rows, losing any added by hand; nothing was "
                         "written", where=str(path),
                         fix="save it as \"CSV UTF-8\" with the registry's header row and write the registries again; "
                             "or move it away (keep a copy of rows you added) or give another --out folder")


def _known_files(manifest: Manifest) -> dict[str, pl.DataFrame]:
    """Every file the manifest has recorded (file_id, srcfile), by the registry its modality's rows go to."""
    known = manifest.query_frame("SELECT file_id, srcfile, modality FROM source_files WHERE modality IN "
                                 "('Waveforms', 'Images')",
                                 schema={"file_id": pl.Int64, "srcfile": pl.String, "modality": pl.String})
    return {name: known.filter(pl.col("modality") == modality).drop("modality")
            for name, modality in (("waveform_registry.csv", "Waveforms"), ("image_registry.csv", "Images"))}


def _not_the_manifests(old: pl.DataFrame, known: pl.DataFrame) -> pl.DataFrame:
    """The rows (_id, _src) of an earlier registry that are not the manifest's own."""
    # (a file_id and the path it names: a row is the manifest's own when its src_file is that file, at the root
    # recorded or at one given since, --site; a row typed in with a file_id an earlier version's file had, or that
    # another row has, was taken for the manifest's and dropped without a word)
    # (and of the registry's modality: a waveform file's row typed into image_registry.csv is no row of the manifest's)
    rows = old.select(_id=pl.col("file_id").str.strip_chars().fill_null(""),  # (an empty one is a row typed in too)
                      _src=(pl.col("src_file").str.strip_chars().fill_null("") if "src_file" in old.columns
                            else pl.lit(None, pl.String)))
    rows = rows.join(known, left_on=pl.col("_id").cast(pl.Int64, strict=False), right_on="file_id", how="left")
    ours = pl.col("srcfile").is_not_null() & (
        pl.col("_src").is_null() | (pl.col("_src") == pl.col("srcfile"))
        | pl.col("_src").str.ends_with("/" + pl.col("srcfile"))).fill_null(False)
    return rows.filter(~ours)


def _refuse_other_manifests_registries(out: Path, known: Mapping[str, pl.DataFrame],
                                       earlier: Mapping[str, pl.DataFrame | None]) -> None:
    """A UsageError when `out` holds a waveform or image registry none of whose rows is a file of this manifest:
    another site's (two sites writing one --out folder) or another manifest's. Its proc_ids, from the same default
    ranges, were this manifest's too, so it was replaced, every row of it gone, exit 1 with a warning that they were
    rows "added by hand perhaps"."""
    for name in ("waveform_registry.csv", "image_registry.csv"):
        old = _with_columns(earlier[name], ["file_id"], every=True)
        if old is None or old.height == 0:
            continue
        extra = _not_the_manifests(old, known[name])
        if extra.height < old.height:
            continue  # (some rows are the manifest's: the others, typed in, are told when it is written)
        shown = ", ".join(f"file_id {i or repr(i)}" + (f" src_file {src!r}" if src else "")
                          for i, src in extra.head(2).select("_id", "_src").iter_rows())
        raise UsageError(f"--out {out} holds a {name} none of whose {plural(old.height, 'row')} is a file of this "
                         f"manifest (e.g. {shown}): another site's registry, or another manifest's, which `registry` "
                         "would replace; nothing was written", where=str(out / name),
                         fix="give each site (each manifest) its own --out folder (e.g. --out release/<site>/); or "
                             "move that registry away first")


def _added_by_hand(manifest: Manifest, out: Path, registries: Registries,
                   earlier: Mapping[str, pl.DataFrame | None], known: Mapping[str, pl.DataFrame]) -> list[str]:
    """A warning for each registry in `out` about to be replaced with rows of file_ids no file of the manifest has
    (typed in by the site: a file delivered otherwise) or columns this tool does not write that hold values (the
    site's notes): the file was written anew without them, exit 0, without a word."""
    said = []
    for name, frame in (("waveform_registry.csv", registries.waveforms), ("image_registry.csv", registries.images)):
        path = out / name
        old = _with_columns(earlier[name], ["file_id"], every=True)
        if old is None:  # (none there, or not one to compare: it is replaced as before)
            continue
        extra = _not_the_manifests(old, known[name])
        columns = [c for c in old.columns if c not in frame.columns
                   and old[c].str.strip_chars().fill_null("").ne("").any()]
        if not (extra.height or columns):
            continue
        lost = []
        if extra.height:
            shown = ", ".join(f"file_id {i or repr(i)}" + (f" src_file {src!r}" if src else "")
                              for i, src in extra.head(3).select("_id", "_src").iter_rows())
            lost.append(f"{plural(extra.height, 'row')} that {'is' if extra.height == 1 else 'are'} not the "
                        f"manifest's ({shown}): a file_id of no file of this manifest, or of another file than the "
                        "row's src_file (a file of an earlier version), or a file of the other registry, added by hand perhaps")
        if columns:
            lost.append(f"{plural(len(columns), 'column')} this tool does not write ("
                        f"{', '.join(repr(c) for c in columns[:5])}), holding values")
        said.append(f"{path} had {', and '.join(lost)}: the registry written now has only the manifest's files and "
                    f"the procedure's columns, so those are gone from it. A copy of the old file is not kept: take "
                    "them from a backup (or type them in again) and add them to the new file before shipping it, or "
                    "give the files a place in the site and run, then write the registries again")
    return said


def _refuse_repeated_header(out: Path, earlier: Mapping[str, pl.DataFrame | None]) -> None:
    """A UsageError when a waveform or image registry in `out` holds its header row again below its first line (two
    exports pasted into one, `cat a.csv b.csv`): it was refused as a registry "with 1 proc_id this manifest never gave
    (e.g. proc_id)", which said neither what was wrong nor where."""
    for name in ("waveform_registry.csv", "image_registry.csv"):
        frame = earlier[name]
        if frame is None or frame.width == 0 or frame.height == 0:
            continue
        cell = [pl.col(c).str.strip_chars().str.strip_chars("\ufeff\"").str.strip_chars().str.to_lowercase() == c
                for c in frame.columns]
        # (line numbers: the header is line 1, and an empty line is a row of nulls, so row i is line i + 2)
        lines = frame.with_row_index("_row").filter(pl.all_horizontal(cell).fill_null(False))["_row"] + 2
        if lines.len():
            shown = ", ".join(str(n) for n in lines.head(3).to_list())
            raise UsageError(f"--out {out} holds a {name} whose header row ({','.join(frame.columns[:3])},...) is "
                             f"repeated on line {shown}" + (f" and {plural(lines.len() - 3, 'other line')}"
                                                              if lines.len() > 3 else "")
                             + ": two registries pasted into one file, perhaps (a header line is no row of a registry, "
                               "and the rows below it may be another's); nothing was written",
                             where=f"{out / name}, line {lines[0]}",
                             fix="remove the repeated header line (and any rows of the other copy that are not this "
                                 "registry's), then write the registries again; or move the file away or give "
                                 "another --out folder")


def _refuse_foreign_registries(manifest: Manifest, out: Path, earlier: Mapping[str, pl.DataFrame | None]) -> None:
    """A UsageError when `out` holds a waveform or image registry with proc_ids this manifest never gave: the site's
    own registry (shipped at its root, or copied to a release folder), whose proc_ids its PROCEDURE_OCCURRENCE rows
    and the centre's joins use. `--out <site>` replaced it by one numbered otherwise, exit 0, without a word, and the
    site's procedure rows then named proc_ids no registry lists (validate: registry.no_procedure)."""
    given = manifest.query_frame("SELECT proc_id FROM registry WHERE proc_id IS NOT NULL",
                                 schema={"proc_id": pl.Int64})["proc_id"]
    for name in ("waveform_registry.csv", "image_registry.csv"):
        path = out / name
        frame = _with_columns(earlier[name], ["proc_id"])
        if frame is None:
            continue  # (no proc_id column to read: no ids anyone joins on are lost by replacing it)
        written = frame["proc_id"]
        ids = pl.select(_norm(pl.lit(written))).to_series()
        foreign = ids.filter(ids.is_not_null() & (ids != "")
                             & ~ids.cast(pl.Int64, strict=False).is_in(given.implode()).fill_null(False))
        if foreign.len() == 0:
            continue
        foreign = foreign.unique(maintain_order=True)
        what = f"{plural(foreign.len(), 'proc_id')} this manifest never gave (e.g. {', '.join(foreign.head(3).to_list())})"
        raise UsageError(f"--out {out} holds a {name} with {what}: a registry the site made itself, whose ids its "
                         "procedure_occurrence.csv and the centre's joins use, which `registry` would replace by one "
                         "numbered otherwise; nothing was written", where=str(path),
                         fix="give an --out folder without it (e.g. --out release/) and compare the two; to ship this "
                             "tool's registries instead, move the site's away first and make the site's procedure rows "
                             "from the new ones (`chorus-batch registry --omop`)")


def _registry_of(name: str) -> str | None:
    """The modality of the registry a site file of this name is (validate's: a CSV named *registry* at the root or in
    Metadata/, an image registry where the name says imag or img, else a waveform one where it says wave)."""
    lower = name.lower()
    if "registry" not in lower or not lower.endswith(".csv"):
        return None
    return "Images" if ("imag" in lower or "img" in lower) else "Waveforms" if "wave" in lower else None


def _refuse_second_registry(manifest: Manifest, out: Path, overrides: Mapping[str | None, str] | None) -> None:
    """A UsageError when `out` is the site's root (or its Metadata/ folder) and the site already ships a registry of a
    modality in the other place (or under another name): `registry --out <site>`, the site's own registries in
    Metadata/, wrote a second pair at the root, exit 0, and the next run found two of each (registry.several, an
    error: "merge them into one"), the site's ids in one and this tool's in the other."""
    roots = manifest.query_frame("SELECT location FROM roots WHERE modality IS NULL AND location NOT LIKE '%://%'",
                                 schema={"location": pl.String})["location"].to_list()
    roots += [location for location in (overrides or {}).values() if "://" not in location]

    def same(a: Path, b: Path) -> bool:
        try:
            return os.path.samefile(a, b)
        except OSError:  # (not there yet: an --out folder to be made holds nothing)
            return False

    for location in dict.fromkeys(roots):
        root = Path(location)
        if not (same(out, root) or (out.name.lower() == "metadata" and same(out.parent, root))):
            continue
        try:
            folders = [root, *(d for d in root.iterdir() if d.name.lower() == "metadata" and d.is_dir())]
            shipped = sorted(f for folder in folders for f in folder.iterdir() if _registry_of(f.name) and f.is_file())
        except OSError:
            continue  # (a folder that cannot be listed: writing there says what is wrong)
        for name in ("waveform_registry.csv", "image_registry.csv"):
            target = out / name
            others = [f for f in shipped if _registry_of(f.name) == _registry_of(name) and not same(f, target)]
            if others:
                other = others[0].relative_to(root).as_posix()
                raise UsageError(
                    f"--out {out} is in the site, which already ships {other}: a {name} written beside it would be a "
                    "second registry of those files (the linkage procedure asks for one; validate's "
                    "registry.several); nothing was written", where=str(root / other),
                    fix=f"give an --out folder outside the site (e.g. --out release/) and compare the two; to ship "
                        f"this tool's registry instead, move {other} out of the site first")


def make_registries(db: str, out: str | Path, *, argv: list[str], version: str | None = None,
                    overrides: Mapping[str | None, str] | None = None,
                    ranges: Mapping[str, tuple[int, int]] | None = None, workers: int = 1,
                    omop: bool = False, cloud: CloudSettings | None = None,
                    progress: Progress | None = None) -> tuple[Registries, list[Path]]:
    """`chorus-batch registry`: build a version's registries (allocating proc_ids under the lock) and write them."""
    from .config import RegistrySection
    from .validate.run import site_sources

    if os.fspath(out).strip() == "-":  # report's and review's standard output; here it made a folder named '-'
        raise UsageError("registry --out is a folder: the registries are two or three files (waveform_registry.csv, "
                         "image_registry.csv, procedure_occurrence.csv with --omop), which standard output (-) cannot "
                         "hold apart; nothing was written", where="--out -",
                         fix="give a folder, such as --out release/ (it is made owner-only), then read a file of it "
                             "(`cat release/waveform_registry.csv`)")
    manifest = Manifest(db)
    if not manifest.path.exists():
        raise UsageError(f"no manifest at {manifest.path}", where=str(manifest.path),
                         fix=pass_db("the manifest's path")
                         + f"; or start one there: {first_run_command(manifest.path)}")
    # This release's schema: an older manifest is not upgraded here (an upgrade, then a refusal such as a --site
    # needed, was exit 2 with the manifest changed): `chorus-batch upgrade` does it, as for the read-only commands
    manifest.require()
    if os.path.isdir(out):  # first: a set a killed registry left half in place is completed, never left mixed
        for said in complete_interrupted_sets(out):
            log.warning(said)
    stale = Path(out) / "procedure_occurrence.csv"
    if not omop and os.path.lexists(stale):  # fresh registries beside an older version's procedures read as one release
        raise UsageError(f"--out {out} holds a procedure_occurrence.csv (an earlier `registry --omop`?), which this "
                         "command without --omop would leave as it is beside the new registries; nothing was written",
                         where=str(stale), fix="add --omop to write it anew with them, or move it away, or give "
                                               "another --out folder")
    from .review import SQLiteReader

    reader = SQLiteReader(manifest.path)  # one for both builds: the version's file list is read once
    version = reader.resolve(version)  # an unknown version (exit 2) makes no --out folder
    if omop:
        _refuse_site_table(manifest, Path(out) / "procedure_occurrence.csv")
    _refuse_open_in_a_spreadsheet(Path(out), omop)
    earlier = _earlier_registries(Path(out))
    _refuse_unreadable_registries(Path(out), earlier)
    _refuse_repeated_header(Path(out), earlier)
    _refuse_foreign_registries(manifest, Path(out), earlier)
    known = _known_files(manifest)
    _refuse_other_manifests_registries(Path(out), known, earlier)
    _refuse_second_registry(manifest, Path(out), overrides)
    made = missing_folders(Path(out))
    private_folder(out)  # before any work: a folder that cannot be made fails now, not after the allocation
    try:
        defaults = RegistrySection()
        ranges = ranges or {"Images": defaults.image_proc_ids, "Waveforms": defaults.waveform_proc_ids}
        sources = site_sources(manifest, overrides, workers=workers, cloud=cloud)
        build = functools.partial(build_registries, manifest, sources, version=version, ranges=ranges,
                                  workers=workers, progress=progress, reader=reader)
        try:  # without the lock first: with every header read and proc_id given, there is nothing to write (a
            registries = build(write=False)  # reviewer who may only read the manifest gets them; a run may go on)
        except _WouldWrite:
            with manifest.lock(argv):
                # (the schema is this release's: require above) a later release's mark is refused before a proc_id
                # is given by this release's rules (it gave them, exit 0, where validate --force refused)
                manifest.ensure_schema(create=False)
                registries = build()
        registries.warnings += (_filled_by_hand(Path(out), registries, earlier)
                                + _added_by_hand(manifest, Path(out), registries, earlier, known))
        return registries, write_registries(registries, out, omop=omop)
    finally:  # stopped or failed before writing (a signal, a refusal): no empty --out folder of its own is left
        remove_empty_folders(made)
