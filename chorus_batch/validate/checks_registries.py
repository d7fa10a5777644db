"""The rules on the linkage registries a site ships (Multimodal-Linkage): one row per file, with
the registry's columns, persons and visits that OMOP knows, and every waveform (or image) file
of the site listed. `chorus-batch registry` writes them; these rules check the site's own."""

from __future__ import annotations

import polars as pl

from ..classify import registry_listed
from ..frames import STAMP, ZONE_DROPPED, fmt, linkage_without_rows
from .rules import AS_NUMBER, KIND_PROCEDURES, KIND_REGISTRY, REGISTRY_COLUMNS, REGISTRY_FILES
from .site import (_as_integer, _found, _norm_id, _one, _Site, _there_untaken, _unreadable, _written_as,
                   shared_files)


_HAS_ALL = pl.all_horizontal([pl.col("columns").list.contains(c) for c in REGISTRY_COLUMNS])


def _of_kind(site: _Site) -> pl.DataFrame:
    """The registries, with the modality each lists (_of)."""
    # The procedures name the tables (the image registry, image_registry; the waveform registry), not the files:
    # imaging_registry.csv and img_registry.csv list images, wave_registry.csv waveforms
    name = pl.col("_name").str.to_lowercase()
    return site.of_kind(KIND_REGISTRY).with_columns(
        _of=pl.when(name.str.contains("imag|img")).then(pl.lit("Images"))
        .when(name.str.contains("wave")).then(pl.lit("Waveforms")))


def _usable(registries: pl.DataFrame) -> pl.DataFrame:
    return registries.filter(pl.col("_ok") & (pl.col("delimiter") == ",") & _HAS_ALL & pl.col("rows").is_not_null())


def _listed(usable: pl.DataFrame) -> pl.DataFrame:
    return usable.select("srcfile", "_of", pl.col("trg_file").alias("_path")).explode("_path")


def _registries(site: _Site, *, first: bool = True) -> list[pl.LazyFrame]:
    """The registries' own rows, and the files of this part they leave out (_not_on_site: the rows naming
    files that no part holds). The rules of the registries' own rows (_own) read only the files every part holds (the
    registries, OMOP/'s tables): they run in the `first` part alone, as _omop (each other part found the same again,
    dropped as repeated: ~45 of a part's ~600 small polars operations)."""
    registries = _of_kind(site)
    out = _absent(site, registries)
    if registries.height == 0:
        return out + _linkage_without_files(site, registries, registries)
    usable = _usable(registries)
    if first:
        out += _own(site, registries, usable)
    if usable.height == 0:
        return out
    out += _linkage_without_files(site, registries, usable)
    out += _unlisted(site, usable)
    return out


def _own(site: _Site, registries: pl.DataFrame, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """The findings on the registries' own rows, against OMOP/'s tables: of the files every part holds alone."""
    out: list[pl.LazyFrame] = []
    # Multimodal-Linkage: "two tabular REGISTRIES", one of each modality: a second one (a browser's "(1)" download, a
    # copy in Metadata/) lists files again or leaves them out, and nothing said which of them is the site's
    several = registries.filter(pl.col("_of").is_not_null()).with_columns(
        _all=pl.col("srcfile").sort().implode().over("_of")).filter(pl.col("_all").list.len() > 1)
    out.append(_found("registry.several", several, "srcfile", fmt(
        "one of {} {} registries the site ships ({}): the linkage procedure asks for one, with a row per file; merge "
        "them into one and remove the others", pl.col("_all").list.len().cast(pl.String),
        pl.col("_of").str.to_lowercase().str.strip_suffix("s"), pl.col("_all").list.join(", "))))
    parsed = registries.filter(pl.col("_ok") & (pl.col("delimiter") == ","))
    out += [
        # a header split by another delimiter may hold the right names: say what is wrong with it (no other rule
        # reads such a registry: it was passed over without a finding)
        _found("registry.columns", registries.filter(pl.col("_ok") & (pl.col("delimiter") != ",")), "srcfile",
               fmt("the header row is split by {}, not commas: write the registry as comma-delimited CSV, one row "
                   "per file", pl.col("delimiter").replace_strict(
                       {"\t": "tabs", ";": "semicolons", "|": "pipes"}, default=pl.col("delimiter"),
                       return_dtype=pl.String))),
        _found("registry.columns", parsed.filter(~_HAS_ALL), "srcfile",
               fmt("the header ({}) lacks some of {}: write one row per file with these columns",
                         pl.col("columns").list.join(","), pl.lit(", ".join(REGISTRY_COLUMNS)))),
        _found("registry.unreadable", registries.filter(pl.col("error").is_not_null()), "srcfile",
               _unreadable("registry", "write it as UTF-8 comma-delimited text with a header row, a row per file")),
    ]
    if usable.height == 0:
        return out
    out.append(_found(
        "registry.unreadable", usable.filter(pl.col("n_header_rows").fill_null(0) > 0), "srcfile",
        fmt("its header row is repeated, on {} line{|s} ({}{}): two registries pasted into one file, perhaps; {that "
            "line is not read as a row|those lines are not read as rows}, the rows below {it|them} are read as this registry's: remove "
            "{it|them}, and any rows that are not this registry's", pl.col("n_header_rows").cast(pl.String),
            pl.concat_str(pl.lit("line "), pl.col("header_rows").list.join(", ")),
            pl.when(pl.col("n_header_rows") > pl.col("header_rows").list.len()).then(
                fmt(" and {} more", (pl.col("n_header_rows") - pl.col("header_rows").list.len()).cast(pl.String)))
            .otherwise(pl.lit("")), n="n_header_rows")))
    out += [
        # each kind of repeat the registry has, with examples (a file_id alone repeated was "0 file(s) have more
        # than one row (e.g. ) and 1 file_id(s) repeat")
        _found("registry.duplicate", usable.filter((pl.col("n_duplicate_files") > 0) | (pl.col("n_duplicate_ids") > 0)),
               "srcfile",
               fmt("{}: keep one row per file, each with a file_id of its own (the linkage procedure's key of the "
                   "registry)", pl.concat_str([
                       pl.when(pl.col("n_duplicate_files") > 0).then(fmt(
                           "{} file{|s} {has|have} more than one row (e.g. {})", pl.col("n_duplicate_files"),
                           pl.col("duplicate_files").list.head(3).list.join(", "))),
                       pl.when(pl.col("n_duplicate_ids") > 0).then(fmt(
                           "{} file_id{|s} {is|are} on more than one row (e.g. {})", pl.col("n_duplicate_ids"),
                           pl.col("duplicate_ids").list.join(", ")))],
                       separator="; ", ignore_nulls=True))),
        _found("registry.missing_file", usable.filter(pl.col("no_src") > 0), "srcfile",
               fmt("{} row{|s} {lacks|lack} src_file: give the path of each file in the site's own storage", pl.col("no_src"))),
        # The Imaging SOP: the image registry's trg_file "will be populated centrally, leave blank or null"
        _found("registry.missing_file", usable.filter((pl.col("_of") != "Images").fill_null(True) & (pl.col("no_trg") > 0)),
               "srcfile", fmt("{} row{|s} {lacks|lack} trg_file: give the site-relative path of the delivered file",
                              pl.col("no_trg"))),
    ]
    # The Imaging SOP: "please implement columns in the order listed below" (image_registry_id first, which the
    # linkage SOP's column list leaves out: it may be absent); other columns may come between
    order = ["image_registry_id", *REGISTRY_COLUMNS]
    in_order = pl.col("columns").list.eval(pl.element().filter(pl.element().is_in(order))).list.join(",")
    out.append(_found(
        "registry.column_order",
        usable.filter((pl.col("_of") == "Images") & ~in_order.is_in([",".join(order), ",".join(REGISTRY_COLUMNS)])),
        "srcfile",
        fmt("the columns are in the order {}: the Imaging SOP asks for {} in this order; write them so",
            in_order.str.replace_all(",", ", "), pl.lit(", ".join(order)))))
    out += _registry_ids(usable)
    # Only the kinds of fault a registry has are told: an empty cell is to be filled in, not reformatted.
    faults = {"no_file": "{} row{|s} with an empty file_id", "no_proc": "{} row{|s} with an empty proc_id",
              "bad_proc": "{} row{|s} with a proc_id that is not an integer from 0 to 9223372036854775807 (a bigint)",
              "no_person": "{} row{|s} with an empty person_id",
              "bad_person": "{} row{|s} with a person_id that is not an integer (OMOP's person_id, an integer or "
                            "bigint)",
              "no_group": "{} row{|s} with an empty group_id",
              "bad_visit": "{} row{|s} with a visit_id that is not an integer (a visit_occurrence_id, an integer or "
                           "bigint; empty where no visit of the person overlaps)",
              "no_datetime": "{} row{|s} with an empty datetime",
              "bad_datetime": "{} row{|s} with a datetime that is not yyyy-MM-dd HH:mm:ss (nor M/d/yyyy H:mm:ss, as the Imaging SOP's example writes it)"}
    told = pl.concat_str([pl.when(pl.col(key) > 0).then(fmt(text, pl.col(key))) for key, text in faults.items()],
                         separator=", ", ignore_nulls=True)
    out.append(_found(
        "registry.values", usable.filter(pl.any_horizontal(pl.col(key).fill_null(0) > 0 for key in faults)), "srcfile",
        fmt("{} ({}): proc_id becomes procedure_occurrence_id, person_id and datetime the procedure's person and "
            "time, file_id is the registry's key, group_id the session or accession joining a procedure's files (the "
            "Imaging SOP's registry has all five NOT NULL); fill in or fix "
            "the values", told,
            _rows("bad_rows", pl.col("n_bad_rows")))))
    out.append(_found(
        "registry.person_folder", usable.filter(pl.col("n_other_person").fill_null(0) > 0), "srcfile",
        fmt("{} row{|s} {gives|give} a person_id other than the person folder their trg_file lies in ({}): the "
            "linkage procedure asks person_id to match the file's person folder; fix person_id or trg_file",
            pl.col("n_other_person"), _rows("other_person_rows", pl.col("n_other_person")))))
    if site.person_ids is not None:
        # (an id that is no integer, nor one written as a decimal, is registry.values': adding it to person.csv fixes
        # nothing)
        people = usable.select("srcfile", pl.col("person_id").alias("_p")).explode("_p").filter(
            ~_norm_id(pl.col("_p")).is_in(site.person_ids.implode())
            & (pl.col("_p").str.strip_chars().str.strip_chars('"').str.contains(r"^[0-9]+$")
               | pl.col("_p").str.strip_chars().str.strip_chars('"').str.contains(AS_NUMBER)))
        # person.csv's ids written as decimals (101.0): the registry's 101 is the person, written otherwise there
        decimal = (site.person_ids.to_frame("_written").filter(pl.col("_written").str.contains(AS_NUMBER))
                   .with_columns(_key=_integer(pl.col("_written"))).unique("_key"))
        as_decimal = (people.with_columns(_key=_integer(pl.col("_p"))).join(decimal, on="_key")
                      .sort("_p").group_by("srcfile").agg(_d=pl.col("_p").first(), _w=pl.col("_written").first()))
        people = people.group_by("srcfile").agg(pl.col("_p").sort()).join(as_decimal, on="srcfile", how="left")
        out.append(_found("registry.unknown_person", people, "srcfile",
                          fmt("person_id{|s} {} {is|are} not in {}: fix the rows or add the {person|persons}{}{}",
                              pl.col("_p").list.head(5).list.join(", "), pl.lit(site.person_csv), _decimals("_p"),
                              pl.when(pl.col("_d").is_not_null()).then(fmt(
                                  " (person.csv writes person_ids {}, such as {} as {}: OMOP's person_id "
                                  "is an integer; write person.csv's person_ids as integers)", _plural_form(pl.col("_w")),
                                  pl.col("_d"), pl.col("_w"))).otherwise(pl.lit("")),
                              n=pl.col("_p").list.len())))
    if site.visit_persons is not None:
        # Multimodal-Linkage: visit_id is the visit "for the given patient" (the row's person_id)
        given = _visit_pairs(usable)
        # a visit_occurrence_id that visit_occurrence.csv repeats for several persons (its key, one row per visit):
        # a row of one of them was told to "fix visit_id", though the table is what is wrong
        # (the visits named only: visit_persons holds every row of the table, millions on a large site)
        owners = (site.visit_persons.join(given.select("_visit").unique(), on="_visit", how="semi").unique()
                  .group_by("_visit").agg(pl.col("_visit_person").sort()))
        given = given.join(owners, on="_visit").with_columns(
            _theirs=pl.col("_visit_person").list.contains(pl.col("_person")),
            _owners=pl.col("_visit_person").list.join(", "), _k=pl.col("_visit_person").list.len())
        other = (given.filter(~pl.col("_theirs"))
                 .with_columns(_same=pl.col("_visit_person").list.eval(_integer(pl.element()))
                               .list.contains(_integer(pl.col("_person"))))
                 .sort("_visit", "_person").group_by("srcfile", maintain_order=True)
                 .agg(_told=fmt("visit {} of {person|persons} {}, given to person {}", pl.col("_visit"),
                                pl.col("_owners"), pl.col("_person"), n=pl.col("_k")), _n=pl.len(),
                      _same=fmt("{} and {}", pl.col("_owners"), pl.col("_person")).filter(pl.col("_same")).first()))
        out.append(_found("registry.visit_person", other, "srcfile", fmt(
            "{} visit_id{|s} {is|are} given to rows of another person than visit_occurrence.csv's (e.g. {}): the linkage "
            "procedure asks for a visit of the row's person; fix visit_id, or leave it empty where none of theirs "
            "overlaps{}",
            pl.col("_n"), pl.col("_told").list.head(3).list.join("; "),
            _same_written_as_decimal("visit_occurrence.csv", pl.col("_same")))))
        repeated = (given.filter(pl.col("_theirs") & (pl.col("_k") > 1)).unique(["srcfile", "_visit"])
                    .sort("_visit").group_by("srcfile", maintain_order=True)
                    .agg(_told=fmt("visit {} of persons {}", pl.col("_visit"), pl.col("_owners")), _n=pl.len()))
        out.append(_found("registry.visit_person", repeated, "srcfile", fmt(
            "{} visit_id{|s} of these rows {is|are}, in visit_occurrence.csv, the visit of more than one person (e.g. "
            "{}): visit_occurrence_id is that table's key, one row per visit, so which person's visit a row names "
            "cannot be told; give each visit its own visit_occurrence_id in visit_occurrence.csv, then check the "
            "rows' visit_id", pl.col("_n"), pl.col("_told").list.head(3).list.join("; "), n=pl.col("_n"))))
    if site.visit_ids is not None:
        visits = usable.select("srcfile", pl.col("visit_id").alias("_v")).explode("_v").filter(
            pl.col("_v").is_not_null() & ~_norm_id(pl.col("_v")).is_in(site.visit_ids.implode()))
        # visit_occurrence.csv's ids written as decimals (5000.0): the registry's 5000 is that visit, written otherwise
        # there (as person.csv's are told: registry.unknown_person); "fix the rows" sent the site to rows that are right
        written = (site.visit_ids.to_frame("_written").filter(pl.col("_written").str.contains(AS_NUMBER))
                   .with_columns(_key=_integer(pl.col("_written"))).unique("_key") if visits.height
                   else pl.DataFrame(schema={"_written": pl.String, "_key": pl.String}))
        as_decimal = (visits.with_columns(_key=_integer(pl.col("_v"))).join(written, on="_key")
                      .sort("_v").group_by("srcfile").agg(_d=pl.col("_v").first(), _w=pl.col("_written").first()))
        visits = visits.group_by("srcfile").agg(pl.col("_v").sort()).join(as_decimal, on="srcfile", how="left")
        out.append(_found("registry.unknown_visit", visits, "srcfile",
                          fmt("visit_id{|s} {} {is|are} not in visit_occurrence.csv: fix the rows or leave visit_id "
                              "empty where no visit overlaps{}{}", pl.col("_v").list.head(5).list.join(", "),
                              _decimals("_v"),
                              pl.when(pl.col("_d").is_not_null()).then(fmt(
                                  " (visit_occurrence.csv writes visit_occurrence_ids {}, such as {} as {}: "
                                  "OMOP's visit_occurrence_id is an integer; write visit_occurrence.csv's "
                                  "visit_occurrence_ids as integers)", _plural_form(pl.col("_w")), pl.col("_d"),
                                  pl.col("_w"))).otherwise(pl.lit("")),
                              n=pl.col("_v").list.len())))
    out += _visit_times(site, usable)
    out += _visit_missing(site, usable)
    out += _overlap(site, usable)
    out += _no_procedure(site, usable)
    out += _other_concept(site, usable)
    out += _procedure_person(site, usable)
    out += _procedure_visit(site, usable)
    out += _conflicts(usable)
    return out


def _unlisted(site: _Site, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """registry.unlisted_file: the files of this part of a modality whose registry lists them not."""
    out: list[pl.LazyFrame] = []
    listed = _listed(usable)
    for modality in ("Waveforms", "Images"):
        mine = usable.filter(pl.col("_of") == modality)
        if mine.height == 0 or (modality == "Images" and (mine["no_trg"] > 0).any()):
            continue  # an image registry leaving trg_file to the centre does not say which files its rows are
        files = site.files.lazy().filter(pl.col("_is_person") & registry_listed()
                                         & (pl.col("modality") == modality)).select("srcfile").collect()
        # (a row naming it in other letter case is registry.missing_file's, which names both)
        lower = pl.col("srcfile").str.to_lowercase()
        unlisted = files.join(listed.filter(pl.col("_of") == modality).select(srcfile=pl.col("_path")),
                              on="srcfile", how="anti").filter(
            ~lower.is_in(listed.filter(pl.col("_of") == modality)["_path"].str.to_lowercase().implode()))
        out.append(_found("registry.unlisted_file", unlisted, "srcfile",
                          fmt("this {} file has no row in {}: add it", pl.lit(modality.lower()[:-1]),
                                    pl.lit(mine["srcfile"].min()))))
    return out


def _visit_pairs(usable: pl.DataFrame) -> pl.DataFrame:
    """The (visit_id, person_id) pairs of each registry's rows (srcfile, _visit, _person; norm ids)."""
    return (usable.select("srcfile", "visit_persons").explode("visit_persons").drop_nulls("visit_persons")
            .select("srcfile", _visit=_norm_id(pl.col("visit_persons").list.get(0)),
                    _person=_norm_id(pl.col("visit_persons").list.get(1))))


def _visit_times(site: _Site, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """registry.visit_time: Multimodal-Linkage's visit_id is the person's visit "that overlaps with the timestamp of the
    file capture" (and is left empty where none does): the visits whose start and end in visit_occurrence.csv do not
    hold the capture times of the rows that name them (each visit's first and last, registry_csv.v11 on)."""
    given = (usable.select("srcfile", "visit_times").explode("visit_times").drop_nulls("visit_times")
             .select("srcfile", _visit=_norm_id(pl.col("visit_times").list.get(0)),
                     _first_as=pl.col("visit_times").list.get(1), _last_as=pl.col("visit_times").list.get(2)))
    if site.visit_persons is not None and given.height:
        # a visit of another person is registry.visit_person's (the fix is another visit, not another time)
        pairs = _visit_pairs(usable).rename({"_person": "_visit_person"})
        owned = site.visit_persons.join(pairs.select("_visit").unique(), on="_visit", how="semi").unique()
        others = pairs.join(owned, on=["_visit", "_visit_person"], how="anti").select("srcfile", "_visit")
        given = given.join(others, on=["srcfile", "_visit"], how="anti")
    spans = site.visit_spans(given["_visit"].unique()) if given.height else None
    if spans is None:
        return []
    zoned = _zoned("registry.visit_time", given.join(spans.filter("_zoned"), on="_visit"), "that these rows name")
    outside = (
        given.lazy().join(spans.lazy(), on="_visit")
        .with_columns(_first=pl.col("_first_as").str.strptime(pl.Datetime, STAMP, strict=False),
                      _last=pl.col("_last_as").str.strptime(pl.Datetime, STAMP, strict=False))
        .filter((pl.col("_first") < pl.col("_start")) | (pl.col("_last") > pl.col("_end")))
        .sort("srcfile", "_visit")
        .group_by("srcfile", maintain_order=True)
        .agg(_n=pl.len(), _told=fmt(
            "visit {} ({} to {}) given to rows captured {}", pl.col("_visit"), pl.col("_start").dt.strftime(STAMP),
            pl.col("_end").dt.strftime(STAMP),
            pl.when(pl.col("_first") == pl.col("_last")).then(pl.col("_first_as"))
            .otherwise(fmt("from {} to {}", pl.col("_first_as"), pl.col("_last_as")))))
    )
    return [*zoned, _found("registry.visit_time", outside, "srcfile", fmt(
        "{} visit_id{|s} {is|are} given to rows captured outside the visit's start and end in visit_occurrence.csv "
        "(e.g. {}): the linkage procedure asks for the person's visit that overlaps the capture time; fix visit_id (or "
        "the datetime, or the visit's start and end), or leave visit_id empty where no visit of the person overlaps",
        pl.col("_n"), pl.col("_told").list.head(3).list.join("; ")))]


def _zoned(rule: str, pairs: pl.DataFrame, whose: str) -> list[pl.LazyFrame]:
    """`rule`'s finding for the visits of `pairs` (srcfile, _visit, _start_as, _end_as) whose start or end datetime
    visit_occurrence.csv writes with a time zone: compared with the capture times as the clock time written (as
    `registry` reads them, and warns), which sat in either rule's silence when it happened to hold them."""
    if pairs.height == 0:
        return []
    told = (pairs.lazy().unique(["srcfile", "_visit"]).sort("srcfile", pl.col("_visit").cast(pl.Int64, strict=False))
            .group_by("srcfile", maintain_order=True)
            .agg(_n=pl.len(), _told=fmt("visit {}: start '{}', end '{}'", pl.col("_visit"), pl.col("_start_as"),
                                        pl.col("_end_as"))))
    return [_found(rule, told, "srcfile", fmt(
        f"{{}} visit{{|s}} {whose} {{has|have}}, in visit_occurrence.csv, a start or end datetime with a time zone "
        f"(e.g. {{}}): {ZONE_DROPPED}. Write visit_occurrence's datetimes in the site's local time without a "
        "zone, then check the rows' visit_id", pl.col("_n"), pl.col("_told").list.head(3).list.join("; "),
        n=pl.col("_n")))]


def _visit_missing(site: _Site, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """registry.visit_missing, the converse of registry.visit_time: Multimodal-Linkage asks sites without an explicit link
    to "infer the visit based on datetime (i.e. select the visit for the given patient that overlaps with the timestamp
    of the file capture)", and to leave visit_id NULL only "IF there is no visit for that patient that overlaps": the
    rows left empty whose person has a visit in visit_occurrence.csv holding their capture time (registry_csv.v12)."""
    empty = (usable.select("srcfile", "unvisited_times").explode("unvisited_times").drop_nulls("unvisited_times")
             .select("srcfile", _visit_person=_norm_id(pl.col("unvisited_times").list.get(0)),
                     _when_as=pl.col("unvisited_times").list.get(1)))
    spans = site.person_visit_spans(empty["_visit_person"].unique()) if empty.height else None
    if spans is None:
        return []
    zoned = _zoned("registry.visit_missing", empty.join(spans.filter("_zoned"), on="_visit_person"),
                   "of the persons of rows that leave visit_id empty")
    covered = (
        empty.lazy().with_columns(_when=pl.col("_when_as").str.strptime(pl.Datetime, STAMP, strict=False))
        .join(spans.lazy(), on="_visit_person")
        .filter((pl.col("_start") <= pl.col("_when")) & (pl.col("_when") <= pl.col("_end")))
        .group_by("srcfile", "_visit_person", "_when_as").agg(pl.col("_visit").unique().sort())
        .sort("srcfile", "_visit_person", "_when_as")
        .group_by("srcfile", maintain_order=True)
        .agg(_n=pl.len(), _told=fmt("person {} captured {} (visit {})", pl.col("_visit_person"), pl.col("_when_as"),
                                     pl.col("_visit").list.head(3).list.join(" or ")))
    )
    return [*zoned, _found("registry.visit_missing", covered, "srcfile", fmt(
        "{} capture time{|s} of rows that leave visit_id empty {lies|lie} inside a visit of the row's person in "
        "visit_occurrence.csv (e.g. {}): the linkage procedure infers the visit from the datetime where the file has no "
        "explicit link, and leaves visit_id empty only where no visit of the person overlaps; fill in visit_id (or fix "
        "the datetime)", pl.col("_n"), pl.col("_told").list.head(3).list.join("; "), n=pl.col("_n")))]


def _counted(site: _Site, current: pl.DataFrame) -> list[pl.LazyFrame]:
    """An image registry whose rows leave trg_file blank (the Imaging SOP: "populated centrally") does not say which
    file a row is; one row per file (Multimodal-Linkage) still gives each person as many rows as DICOM files (less
    those its other rows name by trg_file). Counted over all the site's files (a person's rows with no file at all
    are rows without their file too)."""
    usable = _usable(_of_kind(site)).filter((pl.col("_of") == "Images") & (pl.col("no_trg") > 0))
    if usable.height == 0:
        return []
    rows = (usable.select("srcfile", _pair=pl.col("blank_trg_persons")).explode("_pair").drop_nulls("_pair")
            .select("srcfile", _person=_norm_id(pl.col("_pair").list.get(0)), _written=pl.col("_pair").list.get(0),
                    _rows=pl.col("_pair").list.get(1).cast(pl.Int64))
            .filter(pl.col("_person") != "")  # (an empty person_id is registry.values')
            .group_by("srcfile", "_person").agg(pl.col("_rows").sum(), pl.col("_written").min()))
    # (its DICOM files: one misplaced, or misnamed, has its row all the same; dicom.* and path.* tell what is wrong)
    files = (current.lazy().filter(pl.col("person_id").is_not_null() & (pl.col("modality") == "Images")
                                   & pl.col("srcfile").str.to_lowercase().str.ends_with(".dcm"))
             .join(_listed(usable).lazy().select(srcfile="_path"), on="srcfile", how="anti")
             .group_by(_person=_norm_id(pl.col("person_id"))).agg(_files=pl.len(), _folder=pl.col("person_id").min())
             .collect().join(usable.select("srcfile"), how="cross"))
    counts = (rows.join(files, on=["srcfile", "_person"], how="full", coalesce=True)
              .with_columns(pl.col("_rows", "_files").fill_null(0)).sort("_person"))

    def told(which: pl.Expr, first: str, second: str) -> pl.LazyFrame:
        return counts.lazy().filter(which).group_by("srcfile").agg(
            _k=pl.len(), _e=fmt(f"person {{}}: {{}} {first[:-1]}{{|s}}, {{}} {second[:-1]}{{|s}}",
                                pl.coalesce("_written", "_folder"), pl.col(f"_{first}"), pl.col(f"_{second}")))

    return [
        _found("registry.unlisted_file", told(pl.col("_files") > pl.col("_rows"), "files", "rows"), "srcfile", fmt(
            "{} person{|s} {has|have} more image files than rows in this registry (e.g. {}): its trg_file is left blank, so "
            "its rows cannot be matched to files, but the linkage procedure asks for one row per file; add the rows "
            "of the files it leaves out", pl.col("_k"), pl.col("_e").list.head(3).list.join("; "))),
        _found("registry.missing_file", told(pl.col("_rows") > pl.col("_files"), "rows", "files"), "srcfile", fmt(
            "{} person{|s} {has|have} more rows in this registry than image files on the site (e.g. {}): one row per file; "
            "remove the rows of files not delivered (or of a file listed twice), or add the files",
            pl.col("_k"), pl.col("_e").list.head(3).list.join("; "))),
    ]


def _rows(listed: str, total: pl.Expr) -> pl.Expr:
    """The rows a registry fact lists (the first five, by number) and how many more there are of `total`: a list
    cut at five said "6 row(s) ... (rows 2, 3, 4, 5, 6)", as if the five were all, and the sixth went unfixed."""
    more = total - pl.col(listed).list.len()
    return fmt("rows {}{}", pl.col(listed).list.join(", "),
               pl.when(more > 0).then(fmt(" and {} more", more.cast(pl.String))).otherwise(pl.lit("")))


def _decimals(ids: str) -> pl.Expr:
    """What to add where ids are integers written as decimals (1.0, as pandas writes an integer column that has empty
    cells): the linkage procedure's ids are integers (bigint), and 1.0 matches no id."""
    decimal = pl.col(ids).list.eval(pl.element().filter(pl.element().str.contains(AS_NUMBER)))
    first = decimal.list.first()
    integer = _as_integer(first)
    return (pl.when(decimal.list.len() > 0)
            .then(fmt(" ({} is an integer written {}: the linkage procedure's ids are integers; write {})", first,
                      _written_as(first).str.replace(r"^as a decimal \((.*)\)$", "as a decimal, $1"),
                      pl.when(integer == first).then(pl.lit("it with all its digits")).otherwise(integer)))
            .otherwise(pl.lit("")))


def _plural_form(written: pl.Expr) -> pl.Expr:
    """"as decimals" or "in scientific notation (...)", as `written` (an id of AS_NUMBER) is."""
    return pl.when(written.str.contains(r"[eE]")).then(_written_as(written)).otherwise(pl.lit("as decimals"))


def _registry_ids(usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """The Imaging SOP's image_registry_id, where a registry has the column: its CREATE TABLE makes it the PRIMARY KEY
    (NOT NULL AUTO_INCREMENT), its CSV header labels a "sequential integer value"."""
    has = usable.filter(pl.col("no_registry_id").is_not_null())
    faults = {"no_registry_id": "{} row{|s} with it empty",
              "bad_registry_id": "{} row{|s} with a value that is not an integer from 0 to 9223372036854775807",
              "dup_registry_id": "{} value{|s} on more than one row"}
    told = pl.concat_str([pl.when(pl.col(key) > 0).then(fmt(text, pl.col(key))) for key, text in faults.items()],
                         separator=", ", ignore_nulls=True)
    return [
        _found("registry.image_registry_id", has.filter(pl.any_horizontal(pl.col(key) > 0 for key in faults)), "srcfile",
               fmt("image_registry_id, the Imaging SOP's primary key of the registry, has {} ({}): number the rows "
                   "1, 2, 3, ... (one integer per row, none twice)", told,
                   _rows("registry_id_rows", pl.col("n_registry_id_rows")))),
        _found("registry.image_registry_order", has.filter(pl.col("unordered_registry_id") > 0), "srcfile",
               fmt("{} row{|s} {has|have} an image_registry_id not above those of the rows before them ({}): the "
                   "Imaging SOP asks for a sequential integer; number the rows in order (1, 2, 3, ...)",
                   pl.col("unordered_registry_id"), _rows("unordered_registry_rows", pl.col("unordered_registry_id")))),
    ]


def _proc_ids_by_runs(site: _Site, usable: pl.DataFrame, runs_column: str, *, inside: bool) -> pl.DataFrame | None:
    """Per registry file, its proc_ids (`_id`, and their count `_k`) that are (inside) or are not among the ids of
    procedure_occurrence.csv's `runs_column` ([first, last] runs); None when no such table was read."""
    procedures = site.of_kind(KIND_PROCEDURES).filter(pl.col("_ok") & pl.col(runs_column).is_not_null())
    if procedures.height == 0:
        return None
    runs = (procedures.select(pl.col(runs_column).explode()).drop_nulls()
            .select(_first=pl.col(runs_column).list.get(0), _last=pl.col(runs_column).list.get(1)).sort("_first"))
    ids = usable.select("srcfile", _id=pl.col("proc_ids")).explode("_id").drop_nulls().sort("_id")
    # the run starting at or before each id (runs are disjoint and sorted): the id is in the table if it reaches it
    reached = pl.col("_last").is_not_null() & (pl.col("_id") <= pl.col("_last"))
    return (ids.join_asof(runs, left_on="_id", right_on="_first", strategy="backward")
            .filter(reached if inside else ~reached)
            .group_by("srcfile").agg(pl.col("_id").cast(pl.String), pl.len().alias("_k")))


def _overlap(site: _Site, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """Multimodal-Linkage: proc_id "Must not overlap with other procedure_occurrence_id values assigned to
    EHR-derived procedures" (the registry rows become PROCEDURE_OCCURRENCE rows of concept 4180938 or 4141651; a
    site that made them has them in its table, under those concepts: not a clash)."""
    clash = _proc_ids_by_runs(site, usable, "ehr_runs", inside=True)
    if clash is None:
        return []
    return [_found("registry.proc_overlap", clash, "srcfile", fmt(
        "{} proc_id{|s} (e.g. {}) {is a procedure_occurrence_id|are procedure_occurrence_ids} of the site's EHR procedures "
        "in procedure_occurrence.csv "
        "(rows whose procedure_concept_id is neither 4180938 Imaging nor 4141651 Monitoring): the linkage procedure "
        "asks proc_ids not to overlap them; give the files' procedures ids of a range the EHR does not use "
        "(`chorus-batch registry` gives them from [registry] image_proc_ids / waveform_proc_ids in chorus.toml)",
        pl.col("_k"), pl.col("_id").list.head(3).list.join(", "), n=pl.col("_k")))]


def _no_procedure(site: _Site, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """Multimodal-Linkage: "you should be able to use them directly to create rows in your OMOP PROCEDURE_OCCURRENCE
    table" (procedure_occurrence_id = proc_id); the Imaging SOP: "Imaging studies should have a corresponding entry in
    the PROCEDURE_OCCURENCE OMOP table". A proc_id no row of procedure_occurrence.csv holds links its files (an image
    study, a waveform session) to nothing. Without a readable table with the id column, omop.* tell why."""
    missing = _proc_ids_by_runs(site, usable, "runs", inside=False)
    if missing is None:
        return []
    return [_found("registry.no_procedure", missing, "srcfile", fmt(
        "{} proc_id{|s} (e.g. {}) {is no procedure_occurrence_id|are not procedure_occurrence_ids} in "
        "procedure_occurrence.csv: each proc_id becomes a "
        "PROCEDURE_OCCURRENCE row (concept 4180938 Imaging or 4141651 Monitoring), which links its files to the "
        "person's other data; add the rows (`chorus-batch registry --omop` writes them) or fix the proc_ids",
        pl.col("_k"), pl.col("_id").list.head(3).list.join(", "), n=pl.col("_k")))]


def _linkage_without_files(site: _Site, registries: pl.DataFrame, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """The converse of registry.no_procedure. Multimodal-Linkage, section C: the site makes its PROCEDURE_OCCURRENCE
    rows of concept 4180938 (images) and 4141651 (waveforms) from the registries, procedure_occurrence_id the proc_id.
    Such a row whose id is no registry row's proc_id (a session deleted, a person removed, after the rows were merged)
    links no file delivered: it passed, 0 findings (`registry` warns of it: one set logic, frames.linkage_without_rows).
    Told only where every registry shipped was read, each row with an integer proc_id (a registry unread, without its
    columns, or with a proc_id empty or not an integer, registry.values', holds ids unknown). Of a concept whose
    modality's registry the site does not ship: told too where the site has no files of that modality (a site with
    no registry at all, its linkage rows kept: 0 findings), the rows naming no registry record; where it has such
    files, registry.absent tells the registry to ship."""
    if registries.height and (usable.height != registries.height
                              or (usable["no_proc"].fill_null(0) + usable["bad_proc"].fill_null(0)).sum()):
        return []
    procedures = site.of_kind(KIND_PROCEDURES)
    if procedures.height == 0 or not {"image_runs", "waveform_runs"} <= set(procedures.columns):
        return []
    procedures = procedures.filter(
        pl.col("_ok") & pl.col("image_runs").is_not_null() & pl.col("waveform_runs").is_not_null())
    shipped = set(usable["_of"].drop_nulls().to_list()) if usable.height else set()
    has = site.holds()
    shown = {runs: concept for runs, concept, modality in (("image_runs", "4180938", "Images"),
                                                           ("waveform_runs", "4141651", "Waveforms"))
             if modality in shipped or not has[modality]}
    if procedures.height == 0 or not shown:
        return []
    unshipped = {concept: (modality, REGISTRY_FILES[modality])
                 for concept, modality in (("4180938", "Images"), ("4141651", "Waveforms")) if modality not in shipped}
    # the linkage ids, kept by the reader as runs [first, last] of consecutive ids of each concept
    runs = (procedures.lazy().select("srcfile", *shown)
            .unpivot(index="srcfile", on=list(shown), variable_name="_concept", value_name="_run").explode("_run")
            .drop_nulls("_run")
            .select("srcfile", _concept=pl.col("_concept").replace_strict(shown, return_dtype=pl.String),
                    id=pl.int_ranges(pl.col("_run").list.get(0), pl.col("_run").list.get(1) + 1))
            .explode("id").with_columns(linkage=pl.lit(True)))
    given = (usable.lazy().select(proc_id=pl.col("proc_ids")).explode("proc_id") if usable.height
             else pl.LazyFrame(schema={"proc_id": pl.Int64}))
    unlinked = runs.join(linkage_without_rows(runs, given), on="id", how="semi").sort("id")
    of_shipped = (unlinked.filter(~pl.col("_concept").is_in(list(unshipped))).group_by("srcfile", maintain_order=True)
                  .agg(_told=fmt("{} ({})", pl.col("id").cast(pl.String), pl.col("_concept")), _k=pl.len()))
    names = " or ".join(sorted(registries["_name"].unique().to_list())) if registries.height else ""
    out = [_found("registry.linkage_without_files", of_shipped, "srcfile", fmt(
        "{} row{|s} of procedure_occurrence.csv of a linkage concept (4180938 Imaging, 4141651 Monitoring) {has a "
        "procedure_occurrence_id|have procedure_occurrence_ids} that no row of {} gives as proc_id (e.g. {}): the "
        "linkage procedure makes these rows from the registries, so {it was|they were} made of registry rows since "
        "gone (a session deleted, or a person removed, after the rows were merged) and {links|link} no file delivered; "
        "remove {that row|those rows} (`chorus-batch registry --omop` writes the rows of the registries anew), or "
        "deliver the files with their registry rows",
        pl.col("_k"), pl.lit(names), pl.col("_told").list.head(3).list.join(", "), n=pl.col("_k")))]
    for concept, (modality, name) in unshipped.items():
        kind = modality.lower()[:-1]
        rows = (unlinked.filter(pl.col("_concept") == concept).group_by("srcfile", maintain_order=True)
                .agg(_ids=pl.col("id").cast(pl.String), _k=pl.len()))
        out.append(_found("registry.linkage_without_files", rows, "srcfile", fmt(
            f"{{}} row{{|s}} of procedure_occurrence.csv {{is a procedure|are procedures}} of concept {concept} "
            f"({'Imaging' if concept == '4180938' else 'Monitoring'} Procedure, e.g. {{}}), the rows the linkage "
            f"procedure makes from the {kind} registry, but the site ships no {name} (nor one in Metadata/) "
            f"and no {kind} files: {{that row names|those rows name}} no registry record and {{links|link}} no file "
            f"delivered; remove {{it|them}} (unless {{it is|they are}} the EHR's own procedures coded so), or deliver the {kind} files with the {name} {{it was|they were}} made "
            f"from (one row per file, its proc_id the procedure_occurrence_id)",
            pl.col("_k"), pl.col("_ids").list.head(3).list.join(", "), n=pl.col("_k"))))
    return out


def _other_concept(site: _Site, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """Multimodal-Linkage: procedure_concept_id "should either be set to 4180938 (Imaging Procedure) for images, or
    4141651 (Monitoring Procedure) for waveform files". A registry's proc_id whose row has the other modality's
    concept (an id of both registries is registry.proc_conflict's)."""
    out = []
    for modality, runs, own, other in (("Waveforms", "image_runs", "4141651 (Monitoring Procedure)",
                                        "4180938 (Imaging Procedure)"),
                                       ("Images", "waveform_runs", "4180938 (Imaging Procedure)",
                                        "4141651 (Monitoring Procedure)")):
        theirs = usable.filter(pl.col("_of").is_not_null() & (pl.col("_of") != modality))["proc_ids"].explode()
        mine = usable.filter(pl.col("_of") == modality).with_columns(
            proc_ids=pl.col("proc_ids").list.eval(pl.element().filter(~pl.element().is_in(theirs.drop_nulls().implode()))))
        wrong = _proc_ids_by_runs(site, mine, runs, inside=True) if mine.height else None
        if wrong is None:
            continue
        out.append(_found("registry.procedure_concept", wrong, "srcfile", fmt(
            f"{{}} proc_id{{|s}} (e.g. {{}}) {{is a row|are rows}} of procedure_occurrence.csv with procedure_concept_id {other}: "
            f"the linkage procedure gives the procedures of {modality.lower()[:-1]} files {own}; set it in {{that row|those rows}}",
            pl.col("_k"), pl.col("_id").list.head(3).list.join(", "), n=pl.col("_k"))))
    return out


def _procedure_person(site: _Site, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """Multimodal-Linkage: the registries "create rows in your OMOP PROCEDURE_OCCURRENCE table", the rows' person_id
    the registry's (the patient whose files they are). A proc_id whose row in procedure_occurrence.csv (of concept
    4180938 or 4141651) is another person's links the files to that person's procedure."""
    procedures = site.of_kind(KIND_PROCEDURES).filter(pl.col("_ok") & pl.col("linkage_persons").is_not_null())
    if procedures.height == 0 or usable.height == 0:
        return []
    theirs = (procedures.select(pl.col("linkage_persons").explode()).drop_nulls()
              .select(_id=pl.col("linkage_persons").list.get(0), _omop=pl.col("linkage_persons").list.get(1)))
    mine = (usable.select("srcfile", "proc_person_pairs").explode("proc_person_pairs").drop_nulls("proc_person_pairs")
            .select("srcfile", _id=pl.col("proc_person_pairs").list.get(0),
                    _person=pl.col("proc_person_pairs").list.get(1)))
    # an id of a registry and a row of the table with persons that differ (leading zeros aside, as OMOP stores ids);
    # a proc_id of several persons in the registry is registry.proc_conflict's, a row of several persons the table's
    mine = mine.filter(_norm_id(pl.col("_person")).n_unique().over("srcfile", "_id") == 1)
    other = (mine.join(theirs, on="_id").filter(_norm_id(pl.col("_person")) != _norm_id(pl.col("_omop")))
             .sort("_id", "_person", "_omop").group_by("srcfile", maintain_order=True)
             .agg(_told=fmt("{} of person {} in the registry, {} in procedure_occurrence.csv", pl.col("_id"),
                            pl.col("_person"), pl.col("_omop")), _n=pl.col("_id").n_unique(),
                  _same=fmt("{} and {}", pl.col("_person"), pl.col("_omop"))
                  .filter(_integer(pl.col("_person")) == _integer(pl.col("_omop"))).first()))
    return [_found("registry.procedure_person", other, "srcfile", fmt(
        "{} proc_id{|s} {is a procedure|are procedures} of another person in procedure_occurrence.csv (e.g. {}): the linkage procedure "
        "makes each proc_id the PROCEDURE_OCCURRENCE row of the files' person; fix person_id in those rows (or the "
        "registry's proc_id or person_id){}", pl.col("_n"), pl.col("_told").list.head(3).list.join("; "),
        _same_written_as_decimal("procedure_occurrence.csv", pl.col("_same")), n=pl.col("_n")))]


def _procedure_visit(site: _Site, usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """Multimodal-Linkage, section C: the registries' columns become the PROCEDURE_OCCURRENCE row's, visit_id its
    visit_occurrence_id. A proc_id whose row in procedure_occurrence.csv (of concept 4180938 or 4141651) names another
    visit, or one where the registry leaves visit_id empty (no visit overlaps), or none where it gives one, links the
    files to another encounter in OMOP than the registry says. A proc_id whose registry rows give several visits is
    not compared (which one its row should name cannot be told)."""
    procedures = site.of_kind(KIND_PROCEDURES).filter(pl.col("_ok") & pl.col("linkage_visits").is_not_null())
    if procedures.height == 0 or usable.height == 0 or "proc_visit_pairs" not in usable.columns:
        return []
    empty = r"^(?i:null|\\n)?$"  # an empty cell, or NULL as SQL exports write it
    theirs = (procedures.select(pl.col("linkage_visits").explode()).drop_nulls()
              .select(_id=pl.col("linkage_visits").list.get(0), _omop=pl.col("linkage_visits").list.get(1))
              .with_columns(_omop=pl.when(pl.col("_omop").str.contains(empty)).then(pl.lit("")).otherwise(pl.col("_omop")))
              # a row of the table repeated under one id with other visits is the table's fault, not compared here
              .filter(_norm_id(pl.col("_omop")).n_unique().over("_id") == 1).unique("_id"))
    mine = (usable.select("srcfile", "proc_visit_pairs").explode("proc_visit_pairs").drop_nulls("proc_visit_pairs")
            .select("srcfile", _id=pl.col("proc_visit_pairs").list.get(0),
                    _visit=pl.col("proc_visit_pairs").list.get(1)))
    mine = mine.filter(_norm_id(pl.col("_visit")).n_unique().over("srcfile", "_id") == 1)
    shown = {"_visit": "visit_id", "_omop": "visit_occurrence_id"}
    other = (mine.join(theirs, on="_id").filter(_integer(pl.col("_visit")) != _integer(pl.col("_omop")))
             .with_columns(**{c: pl.when(pl.col(c) == "").then(pl.lit("(empty)")).otherwise(pl.col(c)) for c in shown})
             .sort("_id").group_by("srcfile", maintain_order=True)
             .agg(_told=fmt("{}: visit_id {} in the registry, visit_occurrence_id {} in procedure_occurrence.csv",
                            pl.col("_id"), pl.col("_visit"), pl.col("_omop")), _n=pl.col("_id").n_unique()))
    return [_found("registry.procedure_visit", other, "srcfile", fmt(
        "{} proc_id{|s} {has its|have their} procedure row in procedure_occurrence.csv under another visit than the "
        "registry gives (e.g. {}): the linkage procedure makes the registry's visit_id the PROCEDURE_OCCURRENCE row's "
        "visit_occurrence_id; make {that row|those rows} and the registry name the same visit (or both none, where no "
        "visit of the person overlaps the capture time)", pl.col("_n"), pl.col("_told").list.head(3).list.join("; "),
        n=pl.col("_n")))]


_integer = _as_integer  # (101.0, 1.01e2: the integer it is)


def _same_written_as_decimal(table: str, person: pl.Expr) -> pl.Expr:
    """Where the persons told apart (`person`: "101.0 and 000101", else null) are one id, one of them written as a
    decimal (pandas writes an integer column that has empty cells so): said, as "another person" alone was not true."""
    return pl.when(person.is_not_null()).then(fmt(
        f"; persons {{}} are one id, one written as a decimal (as pandas writes an integer column with empty cells): "
        f"OMOP's and the linkage procedure's ids are integers, which a loader does not match to a decimal; write the "
        f"person_ids of the registry and {table} as integers",
        person)).otherwise(pl.lit(""))


def _conflicts(usable: pl.DataFrame) -> list[pl.LazyFrame]:
    """Multimodal-Linkage: each proc_id becomes one PROCEDURE_OCCURRENCE row ("distinct PER PROCEDURE"), of one person
    and one procedure_concept_id (4180938 for images, 4141651 for waveforms): a proc_id of two persons, or in both
    registries, makes two rows under one id."""
    ids = usable.filter(pl.col("_of").is_not_null()).select("srcfile", "_of", _id=pl.col("proc_ids")).explode("_id")
    both = (ids.drop_nulls().filter(pl.col("_of").n_unique().over("_id") > 1)
            .group_by("srcfile").agg(pl.col("_id").sort().cast(pl.String), pl.len().alias("_k")))
    return [
        _found("registry.proc_conflict", usable.filter(pl.col("n_proc_persons").fill_null(0) > 0), "srcfile", fmt(
            "{} proc_id{|s} (e.g. {}) {has|have} rows of more than one person_id: a proc_id becomes one PROCEDURE_OCCURRENCE "
            "row, of one person; give each person's procedures their own ids",
            pl.col("n_proc_persons"), pl.col("proc_persons").list.join(", "), n=pl.col("n_proc_persons"))),
        _found("registry.proc_conflict", both, "srcfile", fmt(
            "{} proc_id{|s} (e.g. {}) {is|are} used by both the image and the waveform registry: a proc_id becomes one "
            "PROCEDURE_OCCURRENCE row, an imaging (4180938) or a monitoring (4141651) procedure; give them ids "
            "of their own", pl.col("_k"), pl.col("_id").list.head(3).list.join(", "), n=pl.col("_k"))),
    ]


def _absent(site: _Site, registries: pl.DataFrame) -> list[pl.LazyFrame]:
    """A registry missing for a modality the site has files of. Multimodal-Linkage: "sites should construct two
    tabular REGISTRIES that contain a SINGLE ROW PER FILE", "delivered as CSV files, along with your extract, inside
    the RELEASE directory"; the waveform procedure's submission steps: "Provide the files requested in the
    Multimodal-Linkage SOP"; the Imaging SOP: the image_registry CSV is "to be part of the upload process". A site
    with no images needs no image registry (nor one without waveforms a waveform registry)."""
    shipped = set(registries["_of"].drop_nulls().to_list())
    has = site.holds()

    unread: list[pl.DataFrame] = []  # the files at the root and in Metadata/ that no rule reads, found once a part

    def not_csv(name: str) -> str:
        """A registry of that name in another format (image_registry.tsv, .xlsx) at the root or in Metadata/: no
        rule reads it, and "ships no image_registry.csv" beside "only the linkage registries belong at the root"
        left the site guessing."""
        if not unread:  # (a few of a part's files: each registry missing scanned all of them, 100k files: 0.05 s of CPU)
            unread.append(site.files.lazy().filter(shared_files(pl.col("srcfile")) & pl.col("kind").is_null())
                          .select("srcfile", _name_l=pl.col("_name").str.to_lowercase()).collect())
        stem = name.lower().removesuffix("csv")
        there = (unread[0].lazy().filter(pl.col("_name_l").str.starts_with(stem) & ~pl.col("_name_l").str.ends_with(".csv"))
                 .select(pl.col("srcfile").min()).collect().item())
        return "" if there is None else (f"; {there} is one, not read: the linkage procedure's registries are "
                                         f"\"delivered as CSV files\", write it comma-delimited as {name}")

    return [_one("registry.absent", name,
                 f"the site has {modality.lower()[:-1]} files but ships no {name} (nor one in Metadata/"
                 f"{not_csv(name)}): the linkage "
                 f"procedure asks for a registry with one row per {modality.lower()[:-1]} file (file_id, proc_id, "
                 f"person_id, group_id, visit_id, datetime, src_file, trg_file); `chorus-batch registry` writes it "
                 f"from the manifest, ship it at the site root")
            for modality, name in REGISTRY_FILES.items()
            if modality not in shipped and has[modality]]


def _not_on_site(site: _Site, current: pl.DataFrame) -> list[pl.LazyFrame]:
    """Registry rows naming a file that is not among the site's files (`current`, all of them)."""
    usable = _usable(_of_kind(site))
    if usable.height == 0:
        return []
    on_site = current.lazy().select(pl.col("srcfile").alias("_path"))
    not_in = site.with_untaken(_listed(usable).lazy().join(on_site, on="_path", how="anti")).lazy()
    # a file named so in other letter case (1000.HEA, a copy through Windows; a registry typed by hand): told which
    twins = (current.lazy().select(_twin="srcfile", _lower=pl.col("srcfile").str.to_lowercase())
             .group_by("_lower").agg(pl.col("_twin").min()))
    not_in = not_in.with_columns(_lower=pl.col("_path").str.to_lowercase()).join(twins, on="_lower", how="left")
    gone = not_in.filter(pl.col("_why").is_null())
    # a row naming a file of the site that is not of its registry's modality (an image, an OMOP table in the waveform
    # registry) was passed over: the file is there, but the row makes it a procedure of the other kind (or of none)
    other_kind = (_listed(usable).lazy().filter(pl.col("_of").is_not_null())
                  .join(current.lazy().select(_path="srcfile", _modality=pl.col("modality").fill_null("")), on="_path")
                  .filter(pl.col("_modality") != pl.col("_of"))
                  .sort("_path").group_by("srcfile", "_of", maintain_order=True)
                  .agg(pl.col("_path").head(3), pl.len().alias("_k")))
    return [
        _found("registry.missing_file", other_kind, "srcfile", fmt(
            "{} trg_file{|s} {names a file|name files} of the site outside the persons' {}/ folders (e.g. {}): the {} "
            "registry lists the files of those folders, one row each, and each of its rows becomes a {} procedure; "
            "move the rows of files of the other registry's kind to that registry, and remove those of files that are "
            "neither waveform nor image files", pl.col("_k"), pl.col("_of"), pl.col("_path").list.join(", "),
            pl.when(pl.col("_of") == "Images").then(pl.lit("image")).otherwise(pl.lit("waveform")),
            pl.when(pl.col("_of") == "Images").then(pl.lit("4180938 Imaging")).otherwise(pl.lit("4141651 Monitoring")),
            n=pl.col("_k"))),
        _found("registry.missing_file", gone.filter(pl.col("_twin").is_null()).group_by("srcfile").agg(
            pl.col("_path").sort(), pl.len().alias("_k")), "srcfile",
            # (the paths were most often site-relative already: a file moved or renamed since the registry was
            # written, or not delivered; "give site-relative paths" sent the site to fix what was right)
            fmt("{} trg_file{|s} {names|name} no file of the site (e.g. {}): a row's trg_file is its file's path in "
                "the delivered extract (<person_id>/Waveforms/... or <person_id>/Images/...); correct the rows of "
                "files moved or renamed since the registry was written, deliver the files missing, or remove the rows "
                "of files not delivered", pl.col("_k"), pl.col("_path").list.head(3).list.join(", "), n=pl.col("_k"))),
        _found("registry.missing_file", gone.filter(pl.col("_twin").is_not_null()).sort("_path").group_by(
            "srcfile", maintain_order=True).agg(pl.col("_path").first(), pl.col("_twin").first(), pl.len().alias("_k")),
            "srcfile",
            fmt("{} trg_file{|s} {names|name} no file of the site but one whose name differs only in letter case (e.g. {} is on "
                "the site as {}): names are compared exactly (the centre's storage does); write trg_file as the file "
                "is named, or rename the file", pl.col("_k"), pl.col("_path"), pl.col("_twin"))),
        # one the scan saw but could not take is there: "not on the site" would not be true
        _found("registry.missing_file", not_in.filter(pl.col("_why").is_not_null()).group_by("srcfile", "_why").agg(
            pl.col("_path").min(), pl.len().alias("_k")), "srcfile",
            _there_untaken(fmt("trg_file {}{}", pl.col("_path"), pl.when(pl.col("_k") > 1).then(
                fmt(" (and {} more)", pl.col("_k") - 1)).otherwise(pl.lit(""))))),
    ]


RENAMED_SCHEMA = {"old": pl.String, "new": pl.String, "version": pl.String}
# The per-file findings a person folder renamed after the registries were written gives its files and the registries
# (each then points to the one registry.renamed_folder finding of the folder)
_OF_A_RENAME = ("registry.missing_file", "registry.unlisted_file", "dicom.patient_id")


def renamed_folders(site: _Site, current: pl.DataFrame, renamed: pl.DataFrame | None) -> tuple[list[pl.LazyFrame], pl.DataFrame]:
    """The person folders renamed (`renamed`: old and new top folder, the version that recorded it: the manifest's
    change sets; None or empty where unknown, as on a fresh manifest) that the site's registries still name (a row's
    person_id or trg_file): one registry.renamed_folder finding per folder, on it as now named, and which findings
    to point to it (old, new, version, _regs: the registries naming the old folder). Multimodal-Linkage: a row's
    person_id "should also match the name of that files parent directory"; after the rename, the registries'
    rows of its files named no file (registry.missing_file), its files had no row (registry.unlisted_file), its DICOM
    PatientID was another folder's (dicom.patient_id), and nothing said the folder had been renamed."""
    none = pl.DataFrame(schema={**RENAMED_SCHEMA, "_regs": pl.List(pl.String)})
    if renamed is None or renamed.height == 0 or site is None:
        return [], none
    usable = _usable(_of_kind(site))
    if usable.height == 0:
        return [], none
    tops = current.select(pl.col("srcfile").str.extract(r"^([^/]+)/", 1)).to_series().drop_nulls().unique()
    moved = renamed.filter(pl.col("new").is_in(tops.implode()) & ~pl.col("old").is_in(tops.implode())).sort("version")
    moved = moved.unique("old", keep="last", maintain_order=True)  # (a folder renamed twice: the last)
    if moved.height == 0:
        return [], none
    named = pl.concat([
        usable.select("srcfile", _key="person_id").explode("_key"),
        usable.select("srcfile", _key="trg_file").explode("_key").with_columns(
            pl.col("_key").str.extract(r"^([^/]+)/", 1)),
    ]).drop_nulls().with_columns(_key=_norm_id(pl.col("_key"))).unique()
    told = (moved.with_columns(_key=_norm_id(pl.col("old"))).join(named, on="_key")
            .group_by("old", "new", "version", maintain_order=True).agg(_regs=pl.col("srcfile").unique().sort()))
    if told.height == 0:
        return [], none
    finding = _found("registry.renamed_folder", told, pl.col("new") + "/", fmt(
        "person folder {}/ was renamed {}/ (version {} of the manifest recorded it) after the registries were written: "
        "{} still {names|name} {}/ (a row's person_id or trg_file), so {its|their} rows of these files name no file of the "
        "site and the files have no row (registry.missing_file, registry.unlisted_file; dicom.patient_id where "
        "a DICOM PatientID is {}): the linkage procedure's person_id is the person folder's name. If {} is the person's "
        "person_id in OMOP/person.csv, write the registries again (`chorus-batch registry`, or fix those rows' "
        "person_id and trg_file) and the headers' PatientID; else rename the folder back to {}/",
        pl.col("old"), pl.col("new"), pl.col("version"), pl.col("_regs").list.join(", "), pl.col("old"),
        pl.col("old"), pl.col("new"), pl.col("old"), n=pl.col("_regs").list.len()))
    return [finding], told.select(*RENAMED_SCHEMA, "_regs")


def point_to_renames(findings: pl.DataFrame, told: pl.DataFrame) -> pl.DataFrame:
    """The per-file findings a rename gave (_OF_A_RENAME: of a file under the renamed folder, or of a registry naming
    the old one), each with the cause named: the one registry.renamed_folder finding comes first, these point to it."""
    if told.height == 0 or findings.height == 0:
        return findings
    under = told.select(_top="new", _hint=fmt(" ({}/ was {}/: see registry.renamed_folder)", pl.col("new"),
                                               pl.col("old")))
    registries = told.explode("_regs").group_by("_regs", maintain_order=True).agg(
        _hint2=fmt(" (person folder {}/ was renamed {}/: see registry.renamed_folder)", pl.col("old"),
                   pl.col("new")).str.join(""))
    pointed = (findings.with_columns(_top=pl.col("srcfile").str.extract(r"^([^/]+)/", 1))
               .join(under, on="_top", how="left", maintain_order="left")
               .join(registries, left_on="srcfile", right_on="_regs", how="left", maintain_order="left"))
    hint = pl.coalesce("_hint", "_hint2")
    return pointed.with_columns(message=pl.when(pl.col("rule").is_in(_OF_A_RENAME) & hint.is_not_null())
                                .then(pl.col("message") + hint).otherwise(pl.col("message"))
                                ).drop("_top", "_hint", "_hint2")
