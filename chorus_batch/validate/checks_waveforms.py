"""The rules on waveforms: WFDB headers against their signal files and segments, session
folders, and the RECORDS files."""

from __future__ import annotations

import polars as pl

from .rules import KIND_RECORDS, WFDB_FORMAT_SIZES, WFDB_FORMATS
from .site import _found, _Site


def _wfdb(site: _Site, headers: pl.DataFrame) -> list[pl.LazyFrame]:
    f = site.files
    ok = headers.filter(pl.col("_ok"))
    out = [
        _found("wfdb.bad_header", headers.filter(pl.col("error").is_not_null()), "srcfile",
               pl.format("not a readable WFDB header: {}; write it with a WFDB writer", pl.col("error"))),
        _found("wfdb.record_name", ok.filter(pl.col("record_name") != pl.col("_stem")), "srcfile",
               pl.format("the header's record name is {} but the file is {}.hea: make them equal",
                         pl.col("record_name"), pl.col("_stem"))),
    ]
    signals = (
        ok.filter(pl.col("signals").list.len() > 0)
        .select(pl.col("srcfile").alias("_header"), "_dir", "_name", "sig_len", "signals")
        .explode("signals")
        .unnest("signals")
    )
    bad_fmt = signals.filter(~pl.col("fmt").is_in(WFDB_FORMATS)).group_by("_header").agg(
        pl.col("fmt").unique().sort())
    out.append(_found("wfdb.format", bad_fmt, "_header",
                      pl.format("signal format(s) {} are not WFDB formats the readers support: write the signals in "
                                "format 16 (or another of {})", pl.col("fmt").list.join(", "),
                                pl.lit(", ".join(WFDB_FORMATS)))))
    data = signals.filter(
        (pl.col("fmt") != "0") & pl.col("file_name").is_not_null() & ~pl.col("file_name").is_in(["", "~", "-"])
    ).with_columns(_path=pl.col("_dir") + "/" + pl.col("file_name"))
    present = f.filter(pl.col("_waveforms")).select(pl.col("srcfile").alias("_path"), pl.col("size").alias("_size"))
    out.append(_found(
        "wfdb.missing_dat", data.unique(["_header", "_path"]).join(present, on="_path", how="anti"), "_header",
        pl.format("signal file {} named in this header is not in its folder: add it or fix the header",
                  pl.col("file_name"))))
    sizes = pl.DataFrame(
        {"fmt": list(WFDB_FORMAT_SIZES), "_spg": [v[0] for v in WFDB_FORMAT_SIZES.values()],
         "_bpg": [v[1] for v in WFDB_FORMAT_SIZES.values()]},
        schema={"fmt": pl.String, "_spg": pl.Int64, "_bpg": pl.Int64})
    per_file = (
        data.group_by("_header", "_name", "_path", "file_name")
        .agg(pl.col("samps_per_frame").fill_null(1).sum().alias("_spf"), pl.col("fmt").n_unique().alias("_nfmt"),
             pl.col("fmt").first(), pl.col("byte_offset").fill_null(0).first().alias("_offset"),
             pl.col("sig_len").first())
        .filter((pl.col("_nfmt") == 1) & pl.col("sig_len").is_not_null())
        .join(sizes, on="fmt", how="inner")
        .join(present, on="_path", how="inner")
        .with_columns(_samples=pl.col("sig_len") * pl.col("_spf"))
        .with_columns(
            _min=pl.col("_offset") + (pl.col("_samples") * pl.col("_bpg") + pl.col("_spg") - 1) // pl.col("_spg"),
            _max=pl.col("_offset") + (pl.col("_samples") + pl.col("_spg") - 1) // pl.col("_spg") * pl.col("_bpg"),
        )
    )
    out.append(_found(
        "wfdb.dat_size", per_file.filter((pl.col("_size") < pl.col("_min")) | (pl.col("_size") > pl.col("_max"))),
        "_path",
        pl.format("{} bytes, but {} implies {} (sig_len {} x {} samples per frame in format {}, plus a {}-byte "
                  "offset): the file is truncated or the header is wrong; re-export the record",
                  pl.col("_size"), pl.col("_name"), pl.col("_min"), pl.col("sig_len"), pl.col("_spf"), pl.col("fmt"),
                  pl.col("_offset"))))
    # .dat files in folders whose headers were all read, and that no header names.
    header_dirs = headers.group_by("_dir").agg(pl.col("_ok").all().alias("_all_ok"))
    dats = f.filter(pl.col("_waveforms") & (pl.col("_ext_l") == "dat")).join(
        header_dirs.filter(pl.col("_all_ok")), on="_dir", how="semi")
    out.append(_found(
        "wfdb.unreferenced_dat", dats.join(data.select(pl.col("_path").alias("srcfile")), on="srcfile", how="anti"),
        "srcfile",
        pl.lit("no WFDB header in this folder names this signal file: add it to its record's header or remove it")))
    # Multi-segment records.
    segments = (
        ok.filter(pl.col("segments").is_not_null())
        .select(pl.col("srcfile").alias("_master"), "_dir", pl.col("sig_len").alias("_master_len"), "segments")
        .explode("segments")
        .unnest("segments")
    )
    real = segments.filter(pl.col("name").is_not_null() & (pl.col("name") != "~")).with_columns(
        _path=pl.col("_dir") + "/" + pl.col("name") + ".hea")
    out.append(_found(
        "wfdb.missing_segment", real.join(present, on="_path", how="anti"), "_master",
        pl.format("segment {} is listed but {}.hea is not in this folder: add the segment (header and signal files) "
                  "or fix the list", pl.col("name"), pl.col("name"))))
    seg_len = real.join(ok.select(pl.col("srcfile").alias("_path"), pl.col("sig_len").alias("_seg_len")), on="_path")
    out.append(_found(
        "wfdb.segment_length",
        seg_len.filter((pl.col("length") > 0) & pl.col("_seg_len").is_not_null()
                       & (pl.col("_seg_len") != pl.col("length"))),
        "_path",
        pl.format("this segment has {} samples but its multi-segment header gives {}: make them agree",
                  pl.col("_seg_len"), pl.col("length"))))
    totals = segments.group_by("_master", "_master_len").agg(pl.col("length").sum().alias("_total"))
    out.append(_found(
        "wfdb.segment_length",
        totals.filter(pl.col("_master_len").is_not_null() & (pl.col("_master_len") != pl.col("_total"))), "_master",
        pl.format("the record has {} samples but its segments add up to {}: make them agree", pl.col("_master_len"),
                  pl.col("_total"))))
    # Session folders.
    folders = f.filter(pl.col("_waveforms") & (pl.col("_n") == 4)).group_by("_dir").agg(
        (pl.col("_ext_l") == "hea").any().alias("_has_hea"),
        pl.col("duration_s").is_not_null().all().alias("_all_flat"),
    )
    out.append(_found(
        "wfdb.no_header", folders.filter(~pl.col("_has_hea") & ~pl.col("_all_flat")), pl.col("_dir") + "/",
        pl.lit("session folder has no WFDB header (<session>.hea): add the header, or name its files "
               "<person_id>_<YYYYMMDD>_<HHMMSS>_<duration_s>.<ext>")))
    wfdb_sessions = f.filter(pl.col("_waveforms") & (pl.col("_n") == 4)
                             & (pl.col("_name") == pl.col("_third") + ".hea")).select("_dir")
    csvs = f.filter(pl.col("_waveforms") & (pl.col("_n") == 4) & (pl.col("_ext_l") == "csv")).join(
        wfdb_sessions, on="_dir", how="semi")
    out.append(_found(
        "wfdb.numerics_name", csvs.filter(pl.col("_name") != pl.col("_third") + "n.csv"), "srcfile",
        pl.format("a CSV in WFDB session {} should be its numerics, named {}n.csv: rename it", pl.col("_third"),
                  pl.col("_third"))))
    return out


def _records(site: _Site, headers: pl.DataFrame) -> list[pl.LazyFrame]:
    records = site.of_kind(KIND_RECORDS)
    out = [_found("records.unreadable", records.filter(pl.col("error").is_not_null()), "srcfile",
                  pl.format("cannot read this RECORDS file: {}; write one record name per line as UTF-8 text",
                            pl.col("error")))]
    names = headers.select("_top", "_second", "_dir", "_stem", "srcfile")
    if names.height == 0 and records.height == 0:
        return out
    segment_names = (
        headers.filter(pl.col("_ok") & pl.col("segments").is_not_null())
        .select("_dir", pl.col("segments").list.eval(pl.element().struct.field("name")).alias("_stem"))
        .explode("_stem")
    )
    top_level = names.join(segment_names, on=["_dir", "_stem"], how="anti")
    entries = (
        records.filter(pl.col("_ok"))
        .select("srcfile", "_top", "_dir", "_n", pl.col("records").alias("_entry"))
        .explode("_entry")
        .filter(pl.col("_entry").is_not_null())
        .with_columns(_stem=pl.col("_entry").str.strip_chars_end("/").str.split("/").list.last())
    )
    person_level, folder_level = entries.filter(pl.col("_n") == 3), entries.filter(pl.col("_n") != 3)
    with_records = records.select("_top").unique()
    unreadable = records.filter(~pl.col("_ok")).select("_top").unique()
    out.append(_found(
        "records.missing",
        names.join(with_records, on="_top", how="anti").group_by("_top").agg(pl.col("_second").min()),
        pl.format("{}/{}/RECORDS", pl.col("_top"), pl.col("_second")),
        pl.lit("this person has WFDB records but no RECORDS file: add <person>/Waveforms/RECORDS listing the record "
               "names, one per line")))
    unlisted = (
        top_level.join(with_records, on="_top", how="semi")
        .join(unreadable, on="_top", how="anti")
        .join(person_level.select("_top", "_stem"), on=["_top", "_stem"], how="anti")
        .join(folder_level.select("_dir", "_stem"), on=["_dir", "_stem"], how="anti")
    )
    out.append(_found("records.unlisted", unlisted, "srcfile",
                      pl.format("record {} is not listed in a RECORDS file: add it to <person>/Waveforms/RECORDS",
                                pl.col("_stem"))))
    absent = pl.concat([
        person_level.join(names.select("_top", "_stem"), on=["_top", "_stem"], how="anti"),
        folder_level.join(names.select("_dir", "_stem"), on=["_dir", "_stem"], how="anti"),
    ])
    out.append(_found("records.absent", absent, "srcfile",
                      pl.format("lists record {} but {}.hea is not on the site: add the record or remove the line",
                                pl.col("_entry"), pl.col("_stem"))))
    return out
