"""The rules on images: DICOM headers against their folders and file names (today's
<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm, and the names of earlier
editions), and against de-identification (PatientID is the person, identifying attributes empty)."""

from __future__ import annotations

import polars as pl

from ..frames import fmt, shown
from .readers import OWN_REMEDY, PIXELS_CUT
from .rules import (
    IDENTIFYING_DICOM_TAGS,
    KIND_DICOM,
    RECOMMENDED_DICOM_TAGS,
    SERIES_DICOM_TAGS,
    SERIES_DICOM_TAGS_BY_MODALITY,
    STUDY_DICOM_TAGS,
    STUDY_DICOM_TAGS_MR,
)
from .site import _Across, _counted_list, _first_of, _found, _join_list, _norm_id, _Site

_FIRST_UPLOAD_NAME = r"^[^_]+_[^_]+_[^_]+_(?P<mod>[A-Za-z0-9]+)_(?P<inst>[^_]+)\.(?i:dcm)$"


_DICOM_NAME = r"_(?P<date>\d{8})_(?P<time>\d{6})_(?P<mod>[A-Za-z0-9]+)_(?P<series>[^_]+)_(?P<inst>[^_]+)\.(?i:dcm)$"


_X_RAY_MODALITIES = ("CR", "DX", "RG", "XA", "RF")  # the DICOM Modality values of an XR/ folder

# an AccessionNumber the Imaging SOP accepts: the image_occurrence_id, an integer ([0-9], not \d: the regex engine's
# \d takes any script's digits)
_INTEGER_ACCESSION = pl.col("accession_number").fill_null("").str.contains(r"^[0-9]+$")


def _dicom_number(expr: pl.Expr) -> pl.Expr:
    return expr.str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)


def _dicom_time(expr: pl.Expr) -> pl.Expr:
    """HHMMSS of a DICOM TM (HH, HHMM, HHMMSS, with fractions or old-style colons)."""
    return expr.str.replace_all(":", "").str.extract(r"^(\d{2,6})").str.pad_end(6, "0")


def _dicom(site: _Site, across: _Across) -> list[pl.LazyFrame]:
    _accession_folders(site, across)
    files = site.files.lazy()
    d = site.of_kind(KIND_DICOM)
    out = [
        # one remedy: the reason's own (a cut copy is copied again), else a re-export
        _found("dicom.unreadable", d.filter(pl.col("error").is_not_null()), "srcfile",
               pl.when(pl.col("error").str.starts_with(PIXELS_CUT)).then(fmt("the image cannot be read: {}", pl.col("error")))
               .when(pl.col("error").str.contains(OWN_REMEDY)).then(fmt("no readable DICOM header: {}", pl.col("error")))
               .otherwise(fmt("no readable DICOM header: {}; re-export the image as DICOM Part 10 (.dcm)", pl.col("error")))),
        _found("dicom.outside_series", files.filter(pl.col("_outside_series")).join(
            site.person_mismatch.lazy().select("srcfile"), on="srcfile", how="anti"), "srcfile",
               pl.lit("DICOM file is not in <person>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/: move "
                      "it into its modality, accession and series folders")),
        *_current_paths(d), *_deidentified(d, _known_persons(site)), _study_metadata(d), _series_metadata(d),
        _recommended(d), _repeated_instances(d), _repeated_uids(d), _unknown_syntaxes(d), _burned_in(d), _split_series(d),
    ]
    _uids_of_persons(d, across)

    def named_as(day: str, tm: str) -> pl.Expr:
        return pl.col("_name").str.ends_with(pl.concat_str(
            pl.lit("_"), pl.col(day), pl.lit("_"), pl.col(tm).str.head(6), pl.lit("_"), pl.col("modality"), pl.lit("_"),
            pl.col("series_number"), pl.lit("_"), pl.col("instance_number"), pl.lit(".dcm")))

    # Nearly all names spell their header's values exactly: only the others are parsed and compared.
    agree = (named_as("study_date", "study_time") | named_as("acquisition_date", "acquisition_time")).fill_null(False)
    named = (
        d.filter(pl.col("_ok") & (pl.col("_layout") == "images-study"))
        .filter(~agree)
        .with_columns(_g=pl.col("_name").str.extract_groups(_DICOM_NAME))
        .unnest("_g")
        .filter(pl.col("series").is_not_null())
    )
    same = ((pl.col("mod") == pl.col("modality")) & (pl.col("series") == pl.col("series_number"))
            & (pl.col("inst") == pl.col("instance_number"))).fill_null(False)
    name_series = pl.col("series").str.extract(r"(\d+)$").cast(pl.Int64, strict=False)
    name_inst = pl.col("inst").str.extract(r"(\d+)$").cast(pl.Int64, strict=False)

    def differs(label: str, name: pl.Expr, header_value: pl.Expr, header_raw: str, tag: str) -> pl.Expr:
        bad = name.is_null() | header_value.is_null() | (name != header_value)
        return pl.when(bad).then(fmt("{} {} in the name but {} {} in the header", pl.lit(label),
                                           pl.col({"series": "series", "instance": "inst", "modality": "mod"}[label]),
                                           pl.lit(tag), pl.col(header_raw).fill_null("(none)")))

    problems = pl.concat_str([
        differs("modality", pl.col("mod").str.to_uppercase(), pl.col("modality").str.to_uppercase(), "modality",
                "Modality"),
        differs("series", name_series, _dicom_number(pl.col("series_number")), "series_number", "SeriesNumber"),
        differs("instance", name_inst, _dicom_number(pl.col("instance_number")), "instance_number", "InstanceNumber"),
    ], separator="; ", ignore_nulls=True)
    checked = named.filter(~same).with_columns(_problems=problems)
    out.append(_found("dicom.name_mismatch", checked.filter(pl.col("_problems") != ""), "srcfile",
                      fmt("{}: rename the file (or fix the header) so they agree", pl.col("_problems"))))
    pairs = [("study_date", "study_time"), ("series_date", "series_time"), ("acquisition_date", "acquisition_time"),
             ("content_date", "content_time")]
    exact = pl.any_horizontal(
        ((pl.col(day) == pl.col("date")) & (pl.col(tm).str.head(6) == pl.col("time"))).fill_null(False)
        for day, tm in pairs[::2])
    matches = [
        (pl.col(day).str.replace_all(r"[^0-9]", "") == pl.col("date"))
        & (pl.col(tm).is_null() | (_dicom_time(pl.col(tm)) == pl.col("time"))).fill_null(False)
        for day, tm in pairs
    ]
    any_date = pl.any_horizontal(pl.col(day).is_not_null() for day, _ in pairs)
    out.append(_found(
        "dicom.datetime_mismatch",
        named.filter(~exact).filter(any_date & ~pl.any_horizontal(m.fill_null(False) for m in matches)), "srcfile",
        fmt("name date/time {} {} matches none of the header's dates/times (study {} {}): rename the file "
                  "with the study or acquisition date/time", pl.col("date"), pl.col("time"),
                  pl.col("study_date").fill_null("-"), pl.col("study_time").fill_null("-"))))
    # The first upload's names: <person>_<study>_<series>_<Modality>_<InstanceNumber>.dcm
    first = (
        d.filter(pl.col("_ok") & (pl.col("_layout") == "images-study") & pl.col("_name").str.contains(_FIRST_UPLOAD_NAME)
                 & ~pl.col("_name").str.contains(_DICOM_NAME))
        .with_columns(_g=pl.col("_name").str.extract_groups(_FIRST_UPLOAD_NAME)).unnest("_g")
        .with_columns(_problems=pl.concat_str([
            differs("modality", pl.col("mod").str.to_uppercase(), pl.col("modality").str.to_uppercase(), "modality",
                    "Modality"),
            differs("instance", pl.col("inst").str.extract(r"(\d+)$").cast(pl.Int64, strict=False),
                    _dicom_number(pl.col("instance_number")), "instance_number", "InstanceNumber"),
        ], separator="; ", ignore_nulls=True))
    )
    out.append(_found("dicom.name_mismatch", first.filter(pl.col("_problems") != ""), "srcfile",
                      fmt("{}: rename the file (or fix the header) so they agree", pl.col("_problems"))))
    return out


def _current_paths(d: pl.DataFrame) -> list[pl.LazyFrame]:
    """<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm against the header."""
    current = d.lazy().filter(pl.col("_ok") & (pl.col("_layout") == "current")).with_columns(
        _series=pl.col("_dir").str.split("/").list.last(),
        _inst=pl.col("_segment").str.extract(r"(\d+)$").cast(pl.Int64, strict=False),
    )
    # the folder above the accession's as written: <person>/Images/<Modality>/<accession>/<series>/<file> has it third
    plain = ((pl.col("_n") == 6) & (pl.col("_second").str.to_lowercase() == "images")).fill_null(False)
    current = pl.concat([
        current.filter(plain).with_columns(_modality_folder=pl.col("_third")),
        current.filter(~plain).with_columns(
            _modality_folder=pl.col("srcfile").str.extract(r"(?i:images)/([^/]+)/[^/]+/[^/]+/[^/]+$", 1)),
    ])

    # A header without the value is told as such, with what its folder names: the header is to be set, not the folder
    # renamed after "(none)"; a header value that differs from its folder is told with both.
    def differs(what: str, folder: pl.Expr, tag: str, header: pl.Expr, key=lambda value: value) -> pl.Expr:
        return pl.when(header.is_not_null() & (folder.is_null() | (key(folder) != key(header)))).then(
            fmt("{} {} but {} {} in the header", pl.lit(what), folder.cast(pl.String).fill_null("?"), pl.lit(tag),
                header.cast(pl.String)))

    def absent(what: str, folder: pl.Expr, tag: str, header: pl.Expr) -> pl.Expr:
        return pl.when(header.is_null()).then(
            fmt("{} (the {} says {})", pl.lit(tag), pl.lit(what), folder.cast(pl.String).fill_null("?")))

    # Imaging-Data (line 79) and the upload SOP name modality folders "MR, CT, XR (X-ray), or US": XR is no DICOM
    # Modality value, an X-ray image's header says CR or DX (RG, or XA/RF for fluoroscopy): an XR folder names these
    # The folder is compared as it is written: a DICOM Modality (a code string) is upper case, and the folder is its
    # name (CT/, not ct/: a site's Images/ct/ beside another person's Images/CT/ are two folders on the central
    # store, and ct/ passed without a word). The header's value is compared upper-cased. (The manifest's category is
    # the folder upper-cased: the folder as written is read from the path.)
    # (today's <person>/Images/<Modality>/... is read from the path's parts; the pattern only for any other path a
    # site's own patterns call current: on every file it took a fifth of this rule's CPU)
    modality_folder = pl.col("_modality_folder").fill_null(pl.col("_category"))
    header_modality = pl.col("modality").str.strip_chars().str.to_uppercase()
    modality_folder = (pl.when((modality_folder == "XR") & header_modality.is_in(list(_X_RAY_MODALITIES)))
                       .then(header_modality).otherwise(modality_folder))
    checks = [
        ("modality folder", modality_folder, "Modality", header_modality, None),
        # The Imaging SOP: AccessionNumber is "replaced by ... image_occurrence_id from the OMOP table", an integer id:
        # folder 00123 and header 123 name the same one, compared as person ids are (without leading zeros). A header
        # whose AccessionNumber is absent or not an integer is told once, by dicom.accession_id (fix the header), not
        # again here
        ("accession folder", pl.col("_session"), "AccessionNumber", pl.col("accession_number"), _norm_id),
        ("series folder", pl.col("_series"), "SeriesInstanceUID", pl.col("series_instance_uid"), None),
        ("file number", pl.col("_inst"), "InstanceNumber", _dicom_number(pl.col("instance_number")), None),
    ]
    differing = pl.concat_str([
        (pl.when(_INTEGER_ACCESSION).then(differs(w, f, t, h, k)) if t == "AccessionNumber"
         else differs(w, f, t, h) if k is None else differs(w, f, t, h, k))
        for w, f, t, h, k in checks], separator="; ", ignore_nulls=True)
    lacking = pl.concat_str([absent(w, f, t, h) for w, f, t, h, _ in checks if t != "AccessionNumber"],
                            separator=", ", ignore_nulls=True)
    message = pl.concat_str([
        pl.when(pl.col("_lacking") != "").then(fmt("the header has no {}: set it to what the folders and the file name say", pl.col("_lacking"))),
        pl.when(pl.col("_differing") != "").then(fmt(
            "{}: name the folders and the file after the header's values (or fix the header)", pl.col("_differing"))),
    ], separator="; ", ignore_nulls=True)
    checked = (current.with_columns(_differing=differing, _lacking=lacking)
               .filter((pl.col("_differing") != "") | (pl.col("_lacking") != "")))
    return [_found("dicom.path_mismatch", checked, "srcfile", message)]


def _repeated_instances(d: pl.DataFrame) -> pl.LazyFrame:
    """The Imaging SOP names each image of a series <InstanceNumber>.dcm ("the specific image number within a series"):
    two files of one series folder and SeriesInstanceUID with the same number cannot both be named so (001.dcm and
    1.dcm, a copy; or a series whose instances were numbered twice). Once per series folder, as the metadata rules
    (a tool that blanks the numbers would make one finding per file); a header without InstanceNumber is
    dicom.path_mismatch's."""
    numbered = d.lazy().filter(pl.col("_ok")).with_columns(_number=_dicom_number(pl.col("instance_number"))).filter(
        pl.col("_number").is_not_null())
    repeated = (
        numbered.filter(pl.len().over("_dir", "series_instance_uid", "_number") > 1)
        .group_by("_dir", "series_instance_uid", "_number")
        .agg(pl.col("_name").sort(), _n=pl.len())
        .sort("_number")
        .group_by("_dir")
        .agg(_files=pl.col("_n").sum(), _numbers=pl.col("_number").cast(pl.String),
             _example=pl.col("_name").first().list.join(" and "))
    )
    return _found("dicom.instance_repeated", repeated, pl.col("_dir") + "/", fmt(
        "{} DICOM files of this series share InstanceNumber{|s} {} (e.g. {}): the Imaging SOP names each image "
        "<InstanceNumber>.dcm, one file per number; remove copies of one image, or give each image its own "
        "InstanceNumber and name the file after it", pl.col("_files"), _join_list(pl.col("_numbers"), 10),
        pl.col("_example"), n=pl.col("_numbers").list.len()))


def _repeated_uids(d: pl.DataFrame) -> pl.LazyFrame:
    """SOPInstanceUID names one image, the world over: two files of a person holding the same one (an image exported
    twice and renumbered, an edited copy kept beside its original) are one image to a PACS or viewer, which keeps one
    of them. Once per such UID, at the folder of its first file; files of one folder that share their InstanceNumber
    too are told by _repeated_instances alone."""
    shared = (
        d.lazy().filter(pl.col("_ok") & pl.col("sop_instance_uid").is_not_null())
        .filter(pl.len().over("_top", "sop_instance_uid") > 1)
        .with_columns(_number=_dicom_number(pl.col("instance_number")))
        .group_by("_top", "sop_instance_uid")
        .agg(_n=pl.len(), _dirs=pl.col("_dir").n_unique(), _numbers=pl.col("_number").n_unique(),
             _numbered=pl.col("_number").is_not_null().all(), _first=pl.col("_dir").sort_by("srcfile").first(),
             _names=pl.col("_name").sort(), _paths=pl.col("srcfile").sort())
        .filter(~((pl.col("_dirs") == 1) & (pl.col("_numbers") == 1) & pl.col("_numbered")))
        .with_columns(_example=pl.when(pl.col("_dirs") == 1).then(pl.col("_names").list.head(2).list.join(" and "))
                      .otherwise(pl.col("_paths").list.head(2).list.join(" and ")))
    )
    return _found("dicom.instance_repeated", shared, pl.col("_first") + "/", fmt(
        "{} DICOM files of person {} share one SOPInstanceUID (e.g. {}): a SOPInstanceUID names one image, and a PACS "
        "or viewer keeps one of them; remove copies of one image, or give each image its own SOPInstanceUID",
        pl.col("_n"), shown(pl.col("_top")), pl.col("_example")))


def _uids_of_persons(d: pl.DataFrame, across: _Across) -> None:
    """The SOPInstanceUIDs of each series folder, for _uids_shared (across parts: the persons of one part may share
    none with each other and all with another part's). Kept as their 64-bit hashes, a list per series folder: eight
    bytes a file beside the folder's path once."""
    across.sop_uids.append(
        d.lazy().filter(pl.col("_ok") & pl.col("sop_instance_uid").is_not_null())
        .group_by("_top", "_dir").agg(_uids=pl.col("sop_instance_uid").hash().unique())
        .collect())


def _uids_shared(across: _Across) -> list[pl.LazyFrame]:
    """SOPInstanceUID names one image, the world over: the same one in two persons' folders is an image filed under
    the wrong person (a copy error), or a person's images kept under two person_ids (one identity split, or the
    other person's image leaked into this one's data); _repeated_uids tells those within one person. Once per series
    folder, with the other persons' folders that hold its images."""
    if not across.sop_uids:
        return []
    uids = pl.concat(across.sop_uids).lazy().explode("_uids")
    shared = uids.filter(pl.col("_top").n_unique().over("_uids") > 1)
    pairs = (shared.join(shared.select("_uids", _other_top="_top", _other_dir="_dir"), on="_uids")
             .filter(pl.col("_top") != pl.col("_other_top")))
    found = (pairs.group_by("_top", "_dir")
             .agg(_n=pl.col("_uids").n_unique(), _others=_first_of(pl.col("_other_dir")),
                  _n_others=pl.col("_other_dir").n_unique(), _persons=_first_of(pl.col("_other_top")),
                  _n_persons=pl.col("_other_top").n_unique()))
    return [_found("dicom.uid_shared", found, pl.col("_dir") + "/", fmt(
        "{} image{|s} of this series of person {} {has|have} the SOPInstanceUID of an image of person{|s} {} (in {}): a "
        "SOPInstanceUID names one image, so one of them is filed under the wrong person (a copy put in the wrong "
        "folder), or one patient's images are kept under two person_ids; keep each image under its own person only, "
        "and check personal_map.csv maps each patient to one person_id",
        pl.col("_n"), shown(pl.col("_top")), _counted_list(pl.col("_persons"), pl.col("_n_persons")),
        _counted_list(pl.col("_others"), pl.col("_n_others")), n=pl.col("_n_persons")))]


def _unknown_syntaxes(d: pl.DataFrame) -> pl.LazyFrame:
    """A transfer syntax UID that is none of the DICOM standard's (a vendor's private one, or a damaged value): the
    header reads, but no standard viewer decodes the pixel data, and the Imaging SOP asks that each de-identified
    image open in one (Horos/OsiriX). Once per series folder (a series is exported in one syntax)."""
    odd = (d.lazy().filter(pl.col("_ok") & pl.col("unknown_transfer_syntax").is_not_null())
           .group_by("_dir").agg(_n=pl.len(), _syntaxes=pl.col("unknown_transfer_syntax").unique().sort()))
    return _found("dicom.transfer_syntax", odd, pl.col("_dir") + "/", fmt(
        "{} DICOM file{|s} of this series {is|are} written in transfer syntax {}, none of the DICOM standard's (a "
        "vendor's private one, or a damaged value): no standard viewer decodes {its|their} pixel data; export the series "
        "again in a standard transfer syntax (Explicit VR Little Endian, 1.2.840.10008.1.2.1)", pl.col("_n"),
        _join_list(pl.col("_syntaxes"), 3), n=pl.col("_n")))


def _split_series(d: pl.DataFrame) -> pl.LazyFrame:
    """One SeriesInstanceUID whose images carry two AccessionNumbers (a person's): a DICOM series belongs to one study,
    and the Imaging SOP makes the accession the study's image_occurrence_id and the study one procedure. Each accession
    gets its own proc_id (as the SOP asks, one per study), so the series' images went to two procedures without a word
    (one study given two ids when de-identifying, or images filed under the wrong accession). By the headers, as
    integers (070000 is 70000): a folder that disagrees with its header is dicom.path_mismatch's. Told at each of the
    series' folders."""
    # (a series' files share one AccessionNumber nearly always: compared per series, not per file)
    # (the few series of two ids kept before their lists are made: grouping every series into lists, nearly all of one
    # id, took most of this rule's CPU: 16,690 headers, 18 -> 9 ms)
    split = (
        d.lazy().filter(pl.col("_ok") & pl.col("series_instance_uid").is_not_null() & _INTEGER_ACCESSION)
        .with_columns(_acc=_norm_id(pl.col("accession_number")))
        .filter((pl.col("_layout") != "current") | (_norm_id(pl.col("_session")) == pl.col("_acc")))
        .filter(pl.col("_acc").n_unique().over("_top", "series_instance_uid") > 1)
        .group_by("_top", "series_instance_uid")
        .agg(_accs=pl.col("_acc").unique().sort(), _dirs=pl.col("_dir").unique())
        .filter(pl.col("_accs").list.len() > 1)
        .explode("_dirs").rename({"_dirs": "_dir"})
    )
    return _found("dicom.series_split", split, pl.col("_dir") + "/", fmt(
        "the images of this series' SeriesInstanceUID carry {} AccessionNumbers ({}) in this person's folders: a series "
        "belongs to one study, and each accession is a procedure of its own (proc_id); give the series' images one "
        "AccessionNumber (the study's image_occurrence_id) and move them into its accession folder",
        pl.col("_accs").list.len(), _join_list(pl.col("_accs"), 3)))


def _burned_in(d: pl.DataFrame) -> pl.LazyFrame:
    """BurnedInAnnotation YES: the header says the pixels hold text that identifies the patient (a name, an ID burnt
    into the image by the modality or a screen capture), which emptying the header's identifiers leaves in place. The
    Imaging SOP leaves pixel de-identification to the site's approved solution ("under development" centrally), so a
    warning, not an error. Once per series folder, with its count."""
    burned = (d.lazy().filter(pl.col("_ok") & (pl.col("burned_in_annotation").str.strip_chars().str.to_uppercase() == "YES"))
              .group_by("_dir").agg(_n=pl.len()))
    return _found("dicom.burned_in", burned, pl.col("_dir") + "/", fmt(
        "{} DICOM file{|s} of this series say{s|} BurnedInAnnotation YES: {its|their} pixels hold text that identifies "
        "the patient (a name, an ID or a date burnt into the image), which de-identifying the header leaves in place; "
        "remove or mask it (pixel de-identification) and set BurnedInAnnotation to NO, or leave the series out",
        pl.col("_n"), n=pl.col("_n")))


def _accession_folders(site: _Site, across: _Across) -> None:
    """The accession folders of today's layout, for _accessions (across parts)."""
    across.accessions.append(
        site.files.lazy()
        .filter(pl.col("_images") & (pl.col("_layout") == "current") & pl.col("_session").is_not_null())
        .select("_top", "_session", _folder=pl.col("srcfile").str.extract(r"^((?:[^/]+/){4})", 1))
        .unique(["_top", "_folder"])
        .with_columns(_key=_norm_id(pl.col("_session")))
        .collect())


def _accessions(across: _Across) -> list[pl.LazyFrame]:
    """The Imaging SOP replaces AccessionNumber by the OMOP image_occurrence_id, an integer that names one study:
    two spellings of it in one person's folder (070000 and 70000, both agreeing with the header, so
    dicom.path_mismatch is silent) split the study; the same id in two persons' folders is two studies under one id."""
    if not across.accessions:
        return []
    folders = pl.concat(across.accessions).lazy()
    split = folders.filter(pl.col("_session").n_unique().over("_top", "_key") > 1).with_columns(
        _all=pl.col("_folder").sort().over("_top", "_key", mapping_strategy="join"))
    # (each folder names a few of the persons and their count: every person's own accession 1 gave each of 10,000
    # folders the list of all 10,000 persons, as file.duplicate's groups were: _first_of)
    shared = folders.filter(pl.col("_top").n_unique().over("_key") > 1).with_columns(
        _all=_first_of(pl.col("_top")).over("_key", mapping_strategy="join"), _n=pl.col("_top").n_unique().over("_key"))
    return [
        _found("dicom.accession_split", split, "_folder", fmt(
            "accession folders {} name one accession ({}) in different spellings: the Imaging SOP names the folder "
            "after the header's AccessionNumber (the image_occurrence_id); keep the study in one folder",
            pl.col("_all").list.join(", "), pl.col("_key"))),
        _found("dicom.accession_shared", shared, "_folder", fmt(
            "accession {} is used by {} persons ({}): the Imaging SOP replaces AccessionNumber by the "
            "image_occurrence_id, one per study; give each person's studies their own ids", pl.col("_key"), pl.col("_n"),
            _counted_list(pl.col("_all"), pl.col("_n")))),
    ]


def _study_metadata(d: pl.DataFrame) -> pl.LazyFrame:
    """The Imaging SOP's study-level attributes, once per series folder (a study's files share them: a finding per
    file would repeat one cause thousands of times): which are absent from any of its headers, in how many files."""
    absent = {key: pl.col(key).is_null() for key in STUDY_DICOM_TAGS}
    absent |= {key: pl.col(key).is_null() & (_modality() == "MR").fill_null(False) for key in STUDY_DICOM_TAGS_MR}
    keywords = {key: keyword for key, (keyword, _) in (STUDY_DICOM_TAGS | STUDY_DICOM_TAGS_MR).items()}
    return _lacking(d, "dicom.study_metadata", absent, keywords, "study")


def _series_metadata(d: pl.DataFrame) -> pl.LazyFrame:
    """The Imaging SOP's series-level attributes, once per series folder: those of every series, and those of the
    series' modality."""
    absent = {key: pl.col(key).is_null() for key in SERIES_DICOM_TAGS}
    absent |= {key: pl.col(key).is_null() & _modality().is_in(list(modalities)).fill_null(False)
               for key, (_, _, modalities) in SERIES_DICOM_TAGS_BY_MODALITY.items()}
    keywords = {key: keyword for key, (keyword, *_) in (SERIES_DICOM_TAGS | SERIES_DICOM_TAGS_BY_MODALITY).items()}
    return _lacking(d, "dicom.series_metadata", absent, keywords, "series")


_RECOMMENDED_KEYWORDS = {key: keyword for key, (keyword, _, _) in RECOMMENDED_DICOM_TAGS.items()}


def _recommended(d: pl.DataFrame) -> pl.LazyFrame:
    """The attributes the Imaging SOP recommends keeping that the series' modality carries (readers._lacking), once
    per series folder: which are absent from any of its headers, in how many files."""
    lacking = (
        d.lazy().filter(pl.col("_ok") & pl.col("lacking").is_not_null() & (pl.col("lacking").list.len() > 0))
        .group_by("_dir").agg(_n=pl.len(), _keys=pl.col("lacking").list.explode(keep_nulls=False, empty_as_null=False).unique())
        .with_columns(_tags=pl.col("_keys").list.eval(pl.element().replace_strict(
            _RECOMMENDED_KEYWORDS, default=pl.element(), return_dtype=pl.String)).list.sort().list.join(", "))
    )
    return _found("dicom.recommended", lacking, pl.col("_dir") + "/", fmt(
        "{} DICOM file{|s} of this series {lacks|lack} {}: the Imaging SOP recommends keeping these attributes; keep "
        "them when de-identifying, where the source has them", pl.col("_n"), pl.col("_tags")))


def _modality() -> pl.Expr:
    return pl.col("modality").str.strip_chars().str.to_uppercase()


def _lacking(d: pl.DataFrame, rule: str, absent: dict[str, pl.Expr], keywords: dict[str, str], level: str) -> pl.LazyFrame:
    """One finding per series folder whose headers lack some of the `level` attributes (`absent`: a test per key):
    which, in how many files."""
    lacking = (
        d.lazy().filter(pl.col("_ok") & pl.any_horizontal(absent.values()))
        .group_by("_dir").agg(_n=pl.len(), **{key: test.any() for key, test in absent.items()})
        .with_columns(_tags=pl.concat_list([pl.when(pl.col(key)).then(pl.lit(keywords[key])) for key in absent])
                      .list.drop_nulls().list.join(", "))
    )
    return _found(rule, lacking, pl.col("_dir") + "/", fmt(
        f"{{}} DICOM file{{|s}} of this series {{lacks|lack}} {{}}: the Imaging SOP keeps these {level}-level attributes for CHoRUS; "
        f"keep them when de-identifying (or set them from the source {level})", pl.col("_n"),
        pl.col("_tags")))


def _unquoted(value: pl.Expr) -> pl.Expr:
    """What a finding says of a header value that may identify the patient, in place of the value."""
    return fmt("({} character{|s}, not quoted: it may identify the patient)", value.str.len_chars(),
               n=value.str.len_chars())


def _keyword(key: str) -> str:
    """The DICOM keyword a site's tools show (PatientName, OtherPatientIDs), not the facts' key (patient_name)."""
    return "".join("IDs" if part == "ids" else part.capitalize() for part in key.split("_"))


def _known_persons(site: _Site) -> pl.Series:
    """The person ids this check knows (person.csv's and the person folders'), as _norm_id writes them."""
    folders = site.folders.filter(pl.col("_is_person"))["_key"]
    return pl.concat([folders, site.person_ids]) if site.person_ids is not None else folders


def _deidentified(d: pl.DataFrame, persons: pl.Series) -> list[pl.LazyFrame]:
    """PatientID is the person folder, AccessionNumber an integer id; no attribute that identifies the patient is left
    filled. A header value is quoted only where it is no identifier of the patient's: a PatientID that is a person_id of the
    site (a file in another person's folder), an integer AccessionNumber. Any other is the hospital's (a medical
    record number, a RIS accession): a finding is read in logs, the report and the manifest's copy at the centre,
    and says only its length."""
    # (the folder's and the header's person ids as compared, made once for the rules below: each plan made its own)
    ok = d.lazy().filter(pl.col("_ok")).with_columns(_person=_norm_id(pl.col("_top")),
                                                     _patient=_norm_id(pl.col("patient_id"))).collect().lazy()
    person, patient = pl.col("_person"), pl.col("_patient")
    # A person name's empty trailing components may be written or left out (PS3.5 6.2): 000001^ and 000001^^^^ are 000001
    name = _norm_id(pl.col("patient_name").str.strip_chars_end("^= "))
    pseudonym = pl.col("patient_name").is_null() | (name == person) | (name == patient)
    is_filled = {key: pl.col(key).is_not_null() & ~pseudonym if key == "patient_name" else pl.col(key).is_not_null()
                 for key in IDENTIFYING_DICOM_TAGS}
    # The names of the filled ones are listed only for the files that have any: a list per file costs
    # ~6 µs a file (a third of the DICOM rules' time on a de-identified site), the test alone ~0.1 µs.
    filled = pl.concat_list([pl.when(test).then(pl.lit(_keyword(key))) for key, test in is_filled.items()]).list.drop_nulls()
    return [
        _found(
            "dicom.patient_id",
            ok.filter(pl.col("patient_id").is_null() | (patient != person)), "srcfile",
            pl.when(pl.col("patient_id").is_null()).then(fmt(
                "the header has no PatientID: set it to the person_id (the person folder says {}) when de-identifying",
                shown(pl.col("_top")))).otherwise(fmt(
                "PatientID {} in the header is not the person folder {}: set PatientID to the person_id when "
                "de-identifying",
                pl.when(patient.is_in(persons.implode())).then(shown(pl.col("patient_id")))
                .otherwise(_unquoted(pl.col("patient_id"))), shown(pl.col("_top"))))),
        # The Imaging SOP: "PatientID and AccessionNumber in the DICOM metadata are replaced by person_id and
        # image_occurrence_id from the OMOP table" ("Accession number = OMOP: image_occurrence_id"): an integer id.
        # In today's layout the accession folder names the id the header should hold: the finding says which.
        _found(
            "dicom.accession_id",
            ok.filter(~_INTEGER_ACCESSION), "srcfile",
            pl.concat_str([
                pl.when(pl.col("accession_number").is_null()).then(pl.lit("the header has no AccessionNumber"))
                .otherwise(fmt("AccessionNumber {} in the header is not an integer",
                               _unquoted(pl.col("accession_number")))),
                pl.lit(": the Imaging SOP replaces it by the study's image_occurrence_id when de-identifying; set it so"),
                pl.when((pl.col("_layout") == "current") & pl.col("_session").fill_null("").str.contains(r"^[0-9]+$"))
                .then(fmt(" (the accession folder names {})", pl.col("_session"))).otherwise(pl.lit("")),
            ])),
        _found(
            "dicom.identifying_tag", ok.filter(pl.any_horizontal(is_filled.values())).with_columns(_filled=filled), "srcfile",
            # (not "as the de-identification profile does": PS3.15's basic profile also lets PatientName and
            # PatientBirthDate hold a dummy value, which a header cannot tell from a real one)
            fmt("identifying attribute{|s} {} still filled: de-identify the file (empty {it|them}; PatientName may hold "
                "the person id)", pl.col("_filled").list.join(", "), n=pl.col("_filled").list.len())),
    ]
