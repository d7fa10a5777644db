"""The rules on images: DICOM headers against their folders and file names."""

from __future__ import annotations

import polars as pl

from .rules import KIND_DICOM
from .site import _found, _norm_id, _Site


_DICOM_NAME = r"_(?P<date>\d{8})_(?P<time>\d{6})_(?P<mod>[A-Za-z0-9]+)_(?P<series>[^_]+)_(?P<inst>[^_]+)\.(?i:dcm)$"


def _dicom_number(expr: pl.Expr) -> pl.Expr:
    return expr.str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)


def _dicom_time(expr: pl.Expr) -> pl.Expr:
    """HHMMSS of a DICOM TM (HH, HHMM, HHMMSS, with fractions or old-style colons)."""
    return expr.str.replace_all(":", "").str.extract(r"^(\d{2,6})").str.pad_end(6, "0")


def _dicom(site: _Site) -> list[pl.LazyFrame]:
    files = site.files
    d = site.of_kind(KIND_DICOM)
    out = [
        _found("dicom.unreadable", d.filter(pl.col("error").is_not_null()), "srcfile",
               pl.format("no readable DICOM header: {}; re-export the image as DICOM Part 10 (.dcm)", pl.col("error"))),
        _found("dicom.outside_series", files.filter(pl.col("_outside_series")), "srcfile",
               pl.lit("DICOM file is not in <person>/Images/<study>/<series>/: move it into its study and series "
                      "folders")),
    ]

    def named_as(day: str, tm: str) -> pl.Expr:
        return pl.col("_name").str.ends_with(pl.concat_str(
            pl.lit("_"), pl.col(day), pl.lit("_"), pl.col(tm).str.head(6), pl.lit("_"), pl.col("modality"), pl.lit("_"),
            pl.col("series_number"), pl.lit("_"), pl.col("instance_number"), pl.lit(".dcm")))

    # Nearly all names spell their header's values exactly: only the others are parsed and compared.
    agree = (named_as("study_date", "study_time") | named_as("acquisition_date", "acquisition_time")).fill_null(False)
    named = (
        d.filter(pl.col("_ok") & (pl.col("_n") == 5))
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
        return pl.when(bad).then(pl.format("{} {} in the name but {} {} in the header", pl.lit(label),
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
                      pl.format("{}: rename the file (or fix the header) so they agree", pl.col("_problems"))))
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
        pl.format("name date/time {} {} matches none of the header's dates/times (study {} {}): rename the file "
                  "with the study or acquisition date/time", pl.col("date"), pl.col("time"),
                  pl.col("study_date").fill_null("-"), pl.col("study_time").fill_null("-"))))
    out.append(_found(
        "dicom.patient_id",
        d.filter(pl.col("_ok") & pl.col("patient_id").is_not_null() & (pl.col("patient_id") != pl.col("_top")))
        .filter(_norm_id(pl.col("patient_id")) != _norm_id(pl.col("_top"))), "srcfile",
        pl.format("PatientID {} in the header differs from the person folder {}: check the de-identification "
                  "mapping", pl.col("patient_id"), pl.col("_top"))))
    return out
