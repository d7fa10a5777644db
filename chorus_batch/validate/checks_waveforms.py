"""The rules on waveforms: WFDB headers against their signal files and segments, session
folders, and the RECORDS files."""

from __future__ import annotations

import polars as pl

from ..frames import fmt
from .readers import OWN_REMEDY
from .rules import KIND_EDF, KIND_MAPPING, KIND_RECORDS, MAPPING_FILES, WFDB_FORMAT_SIZES, WFDB_FORMATS
from .site import _Across, _counted_list, _first_of, _found, _join_list, _norm_id, _Site, _there_untaken, _unreadable


_POSITIVE_FS = pl.col("fs").is_null() | (pl.col("fs") > 0)


def _edf(site: _Site) -> list[pl.LazyFrame]:
    """An EDF (BDF) recording's header gives its session's start (the waveform registry's capture time) and its
    signals (compared with the mapping in _mapped)."""
    headers = site.of_kind(KIND_EDF)
    # The EDF spec's data records follow the header, each of the same size: a copy cut inside them (an interrupted
    # copy: most of the file's bytes) read well as far as its header, and passed; so did one with bytes after them.
    sized = headers.filter(pl.col("error").is_null() & pl.col("implied_size").is_not_null()
                           & (pl.col("implied_size") != pl.col("size")))
    return [_found("edf.bad_header", headers.filter(pl.col("error").is_not_null()), "srcfile",
                   fmt("not a readable EDF header: {}", pl.col("error"))),
            _found("wfdb.dat_size", sized, "srcfile",
                   fmt("{} bytes, but its EDF header implies {} (its length and its number of data records x the "
                       "bytes each holds): {}", pl.col("size"), pl.col("implied_size"),
                       pl.when(pl.col("size") < pl.col("implied_size"))
                       .then(pl.lit("the file is cut inside its data records (an interrupted copy?); copy it again"))
                       .otherwise(pl.lit("bytes follow its last data record (or the header's number of data records "
                                         "is wrong); re-export the recording")))),
            # (-1 data records: "unknown", which the EDF spec allows only while recording; the file was copied before
            # its recording ended, or its writer never closed it: its length is not known, its end may be missing)
            _found("edf.bad_header", headers.filter(pl.col("error").is_null() & (pl.col("records") == -1)), "srcfile",
                   pl.lit("the header's number of data records is -1, which EDF allows only while the file is being "
                          "recorded: an unfinished recording (copied before it ended, or its writer never closed it); "
                          "deliver the file once its recording has ended and its header states its data records"))]


def _wfdb(site: _Site, headers: pl.DataFrame) -> list[pl.LazyFrame]:
    f = site.files.lazy()  # each use below takes a few columns of some files
    ok = headers.filter(pl.col("_ok"))
    out = [
        # (the remedy once: the reader's own where its reason has one, a compressed header's, readers.OWN_REMEDY)
        _found("wfdb.bad_header", headers.filter(pl.col("error").is_not_null()), "srcfile",
               pl.when(pl.col("error").str.contains(OWN_REMEDY)).then(fmt("not a readable WFDB header: {}", pl.col("error")))
               .otherwise(fmt("not a readable WFDB header: {}; write it with a WFDB writer", pl.col("error")))),
        _found("wfdb.record_name", ok.filter(pl.col("record_name") != pl.col("_stem")), "srcfile",
               pl.when(pl.col("record_name_written").is_null()).then(
                   fmt("the header's record name is {} but the file is {}.hea: make them equal",
                       pl.col("record_name"), pl.col("_stem")))
               # (a name with other characters than ASCII: "make them equal" could not be done, they look equal)
               .otherwise(fmt("the header's record name is {}, which wfdb reads as {} (a WFDB header is ASCII text: "
                              "other characters are dropped), so it is not the file's {}.hea: name the record and its "
                              "files in ASCII (the procedure names them after the integer session id)",
                              pl.col("record_name_written"), pl.col("record_name"), pl.col("_stem")))),
    ]
    out.append(_found(
        "wfdb.line_ends", ok.filter(pl.col("bare_cr").fill_null(False)), "srcfile",
        pl.lit("the header's lines end in a carriage return alone (as old Mac OS tools write text), not a line feed: "
               "wfdb reads it, but the WFDB header format separates lines with line feeds, and the WFDB C library's "
               "tools read this header as one line; save it with line-feed (or CR+LF) line ends")))
    # The Waveform File Format procedure asks for the exact sampling rate (a sample's time is its number / fs); wfdb,
    # the converter's library, refuses fs <= 0 when it writes (Record.check_field). The grammar reads no sign: 0 is all
    out.append(_found(
        "wfdb.sampling_frequency", ok.filter(~_POSITIVE_FS), "srcfile",
        fmt("the record line gives a sampling frequency of {} Hz: no sample has a time; write the record's frequency "
            "in Hz (as exact as the device tells, e.g. 249.987; a multi-segment record's segments share it)",
            pl.col("fs"))))
    signals = (
        ok.filter(pl.col("signals").list.len() > 0)
        .select(pl.col("srcfile").alias("_header"), "_dir", "_name", "sig_len", "signals")
        .explode("signals")
        .unnest("signals")
    )
    bad_fmt = signals.filter(~pl.col("fmt").is_in(WFDB_FORMATS)).group_by("_header").agg(
        pl.col("fmt").unique().sort())
    out.append(_found("wfdb.format", bad_fmt, "_header",
                      fmt("signal format{|s} {} {is no WFDB format|are not WFDB formats} the readers support: write the signals "
                          "in format 16 (or another of {})", pl.col("fmt").list.join(", "),
                          pl.lit(", ".join(WFDB_FORMATS)), n=pl.col("fmt").list.len())))
    data = signals.filter(
        (pl.col("fmt") != "0") & pl.col("file_name").is_not_null() & ~pl.col("file_name").is_in(["", "~", "-"])
    ).with_columns(_path=pl.col("_dir") + "/" + pl.col("file_name"))
    # WFDB keeps a signal file's signals in one format: wfdb (and the WFDB library) read all of them in its first
    # signal's, so "16" and "212" in one file were read as 16 bits each without a word (and the file's size, which
    # needs one format, went unchecked)
    mixed = (data.filter(pl.col("fmt").is_in(WFDB_FORMATS))
             .group_by("_header", "file_name").agg(pl.col("fmt").unique(maintain_order=True).alias("_fmts"))
             .filter(pl.col("_fmts").list.len() > 1).sort("_header", "file_name"))
    out.append(_found("wfdb.format", mixed, "_header", fmt(
        "signal file {} holds signals in formats {}: a WFDB signal file holds its signals in one format (wfdb reads them "
        "all in its first signal's, {}); write the record again with one format for each signal file",
        pl.col("file_name"), pl.col("_fmts").list.join(" and "), pl.col("_fmts").list.first())))
    # and its signals after one byte offset (the '+24' of '16+24': bytes before the samples): wfdb (and the WFDB
    # library) skip the first signal's for all of them, so '16' and '16+24' in one file were read from byte 0 without
    # a word, and the file's size checked against the first's offset alone
    offsets = (data.group_by("_header", "file_name")
               .agg(pl.col("byte_offset").fill_null(0).unique(maintain_order=True).alias("_offsets"))
               .filter(pl.col("_offsets").list.len() > 1).sort("_header", "file_name"))
    out.append(_found("wfdb.format", offsets, "_header", fmt(
        "signal file {} holds signals after byte offsets {} (the '+n' after the format): a WFDB signal file's samples "
        "begin at one offset (wfdb reads them all after its first signal's, {} bytes); write the same offset on each of "
        "its signal lines, or the record again", pl.col("file_name"),
        pl.col("_offsets").cast(pl.List(pl.String)).list.join(" and "), pl.col("_offsets").list.first())))
    present = f.filter(pl.col("_waveforms")).select(pl.col("srcfile").alias("_path"), pl.col("size").alias("_size")
                                                    ).collect()
    # (the few not present, then each once: de-duplicating all 50k signal files first cost 10 ms at 100k files)
    missing = site.with_untaken(data.join(present, on="_path", how="anti").unique(["_header", "_path"]))
    # a file of that name in another case ("X.DAT" for the header's "X.dat", as a Windows site's tools write it): found
    # on Windows, whose names ignore case, not by wfdb on the Linux systems the data are converted on; told as the
    # missing file's name, "not in its folder", while the site sees it there (and again as a file no header names)
    # (the few missing against the present files' lower-case names; none missing, the usual site: no names lowered)
    missing = missing.with_columns(_lower=pl.col("_path").str.to_lowercase())
    other_case = (present.select("_path", _lower=pl.col("_path").str.to_lowercase())
                  .filter(pl.col("_lower").is_in(missing["_lower"].implode()))
                  .group_by("_lower").agg(pl.col("_path").sort().first().alias("_other_case"))
                  if missing.height else pl.DataFrame(schema={"_lower": pl.String, "_other_case": pl.String}))
    missing = missing.join(other_case, on="_lower", how="left").drop("_lower")
    out.append(_found(
        "wfdb.missing_dat", missing, "_header",
        pl.when(pl.col("_why").is_null() & pl.col("_other_case").is_not_null()).then(
            fmt("signal file {} named in this header is not in its folder, but {} is: WFDB file names are "
                "case-sensitive, and wfdb finds it only where names ignore case (Windows), not on the systems CHoRUS "
                "converts on; rename the file {} (or write its name so in the header)", pl.col("file_name"),
                pl.col("_other_case").str.split("/").list.last(), pl.col("file_name")))
        .when(pl.col("_why").is_null() & pl.col("file_name_written").is_not_null()).then(
            # (named with other characters than ASCII: the file the header names as written may well be there)
            fmt("signal file {} named in this header is read by wfdb as {} (a WFDB header is ASCII text: other "
                "characters are dropped), which is not in its folder: rename the signal file, in its folder and in the "
                "header, with ASCII characters only", pl.col("file_name_written"), pl.col("file_name")))
        .when(pl.col("_why").is_null()).then(
            fmt("signal file {} named in this header is not in its folder: add it or fix the header",
                pl.col("file_name"))).otherwise(_there_untaken(fmt("signal file {} named in this header",
                                                                   pl.col("file_name"))))))
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
        # in 128 bits: a header's counts each fit 64 (readers._count), their products need not (a sig_len of 2^62 x 2
        # samples x 2 bytes wrapped to "implies 0 bytes")
        .with_columns(_samples=pl.col("sig_len").cast(pl.Int128) * pl.col("_spf"))
        .with_columns(
            _min=pl.col("_offset") + (pl.col("_samples") * pl.col("_bpg") + pl.col("_spg") - 1) // pl.col("_spg"),
            _max=pl.col("_offset") + (pl.col("_samples") + pl.col("_spg") - 1) // pl.col("_spg") * pl.col("_bpg"),
        )
    )
    out.append(_found(
        "wfdb.dat_size", per_file.filter((pl.col("_size") < pl.col("_min")) | (pl.col("_size") > pl.col("_max"))),
        "_path",
        fmt("{} bytes, but {} implies {} (sig_len {} x {} samples per frame in format {}, plus a {}-byte "
                  "offset): the file is truncated or the header is wrong; re-export the record",
                  pl.col("_size"), pl.col("_name"), pl.col("_min"), pl.col("sig_len"), pl.col("_spf"), pl.col("fmt"),
                  pl.col("_offset"))))
    # .dat files in folders whose headers were all read, and that no header names.
    header_dirs = headers.group_by("_dir").agg(pl.col("_ok").all().alias("_all_ok"))
    dats = f.filter(pl.col("_waveforms") & (pl.col("_ext_l") == "dat")).select("srcfile", "_dir").collect().join(
        header_dirs.filter(pl.col("_all_ok")), on="_dir", how="semi")
    out.append(_found(
        "wfdb.unreferenced_dat", dats.join(data.select(pl.col("_path").alias("srcfile")), on="srcfile", how="anti")
        # (one a header names with other characters than ASCII is told at the header, wfdb.missing_dat)
        .join(data.filter(pl.col("file_name_written").is_not_null())
              .select(srcfile=pl.col("_dir") + "/" + pl.col("file_name_written")), on="srcfile", how="anti")
        # (nor one a header names in another case, "X.dat" for "X.DAT": told at the header, wfdb.missing_dat)
        .join(missing.filter(pl.col("_other_case").is_not_null()).select(srcfile=pl.col("_other_case")),
              on="srcfile", how="anti"),
        "srcfile",
        pl.lit("no WFDB header in this folder names this signal file: add it to its record's header or remove it")))
    # Multi-segment records.
    segments = (
        ok.filter(pl.col("segments").is_not_null())
        .select(pl.col("srcfile").alias("_master"), "_dir", pl.col("sig_len").alias("_master_len"),
                pl.col("fs").alias("_master_fs"), "segments")
        .explode("segments")
        .unnest("segments")
        # (the segment's place in its list: the first, of length 0, is a variable layout's layout segment)
        .with_columns(_seg_no=pl.int_range(pl.len()).over("_master"))
    )
    real = segments.filter(pl.col("name").is_not_null() & (pl.col("name") != "~")).with_columns(
        _path=pl.col("_dir") + "/" + pl.col("name") + ".hea")
    out.append(_found(
        "wfdb.missing_segment", site.with_untaken(real.join(present, on="_path", how="anti")),
        "_master",
        pl.when(pl.col("_why").is_null() & pl.col("name_written").is_not_null()).then(
            # (named with other characters than ASCII: the segment the header names as written may well be there)
            fmt("segment {} listed in this header is read by wfdb as {} (a WFDB header is ASCII text: other characters "
                "are dropped), whose {}.hea is not in this folder: rename the segment, its files and its line here, with "
                "ASCII characters only", pl.col("name_written"), pl.col("name"), pl.col("name")))
        .when(pl.col("_why").is_null()).then(
            fmt("segment {} is listed but {}.hea is not in this folder: add the segment (header and signal files) "
                "or fix the list", pl.col("name"), pl.col("name"))).otherwise(
            _there_untaken(fmt("segment {} is listed: {}.hea", pl.col("name"), pl.col("name"))))))
    # '~' in a segment list is a gap of that many samples, which wfdb (the converter's library) reads only in a variable
    # layout, after a layout segment (a header listing the record's signals, first, of length 0): a record whose first
    # segment is '~' of length 0 (its layout segment left out) it looks for as '~.hea', and one of a fixed layout with a
    # gap it fails to join ("'NoneType' object has no attribute ..."); both passed without a word
    firsts = segments.filter(pl.col("_seg_no") == 0).select("_master", pl.col("name").alias("_first"),
                                                           pl.col("length").alias("_first_len"))
    gaps = (segments.filter(pl.col("name") == "~").join(firsts, on="_master")
            .group_by("_master", "_first", "_first_len").agg(pl.len().alias("_gaps"))
            .filter((pl.col("_first_len") != 0) | (pl.col("_first") == "~")))
    out.append(_found(
        "wfdb.missing_segment", gaps, "_master",
        pl.when(pl.col("_first_len") == 0).then(pl.lit(
            "the first segment, of length 0, is '~': a variable layout's first segment is its layout segment, a header "
            "(of length 0) listing the record's signals, which wfdb reads before the others (it looks for '~.hea' and "
            "cannot read the record); add the layout segment's header and name it here"))
        # (the WFDB header format: "Variable-layout records may contain null segments" ('~'), a fixed layout's each
        # "an ordinary record containing one or more samples"; the WFDB C library reads the gap all the same, wfdb,
        # whose reading the procedure asks the data to suit, does not: an error, said whose reading fails)
        .otherwise(fmt(
            "{} of the segments {is|are} '~' (a null segment: a gap of samples) but the record has no layout segment: "
            "the WFDB header format allows null segments only in a variable layout (a first segment of length 0, a "
            "header listing the record's signals), and wfdb (the CHoRUS converter's library) cannot read this record, "
            "though the WFDB C library's tools read the gap; add a layout segment first in the list (or write the "
            "record again with wfdb)",
            pl.col("_gaps")))))
    seg_len = real.join(ok.select(pl.col("srcfile").alias("_path"), pl.col("sig_len").alias("_seg_len"),
                                  pl.col("n_sig").alias("_seg_n_sig")), on="_path")
    # (a length of 0 is the layout segment's, first in a variable layout's list; told where given to another segment:
    # wfdb's read checks every segment's length against its header's, and reads none of that segment's samples)
    layout = (pl.col("_seg_no") == 0) & (pl.col("length") == 0)
    out.append(_found(
        "wfdb.segment_length",
        seg_len.filter(~layout & pl.col("_seg_len").is_not_null() & (pl.col("_seg_len") != pl.col("length"))),
        "_path",
        fmt("this segment has {} samples but its multi-segment header gives {}: make them agree",
                  pl.col("_seg_len"), pl.col("length"))))
    # WFDB: a fixed layout's segments (the first not of length 0) each hold the record's signals, and a variable
    # layout's layout segment (its first, of length 0) lists them; the others hold some of them, by name. wfdb joins
    # a fixed layout's segments column by column (one of other signals failed its read, or put a signal under
    # another's name), and reads a variable layout's signals as its layout segment lists them: both passed unchecked
    fixed = pl.col("_first_len").ne_missing(0)
    seg_sig = seg_len.join(firsts.select("_master", "_first_len"), on="_master", how="left").join(
        ok.select(pl.col("srcfile").alias("_master"), pl.col("n_sig").alias("_master_n_sig")), on="_master")
    out.append(_found(
        "wfdb.segment_signals",
        seg_sig.filter((fixed | layout) & (pl.col("_seg_n_sig") != pl.col("_master_n_sig"))
                       | ~fixed & ~layout & (pl.col("_seg_n_sig") > pl.col("_master_n_sig"))),
        "_path",
        pl.when(fixed).then(
            fmt("this segment has {} signal{|s} but its multi-segment header {} gives the record {} signal{|s}: each segment of a fixed layout "
                "holds the record's signals, in its order; write the segment with the record's signals (or the record "
                "with a layout segment, of length 0, listing them all, if its segments hold different signals)",
                pl.col("_seg_n_sig"), pl.col("_master").str.split("/").list.last(),
                pl.col("_master_n_sig")))
        .when(layout).then(
            fmt("this layout segment lists {} signal{|s} but its multi-segment header {} gives the record {} signal{|s}: the layout segment "
                "lists each of the record's signals once; make them agree", pl.col("_seg_n_sig"),
                pl.col("_master").str.split("/").list.last(), pl.col("_master_n_sig")))
        .otherwise(
            fmt("this segment has {} signal{|s} but its multi-segment header {} gives the record {} signal{|s}: a segment holds some of the "
                "record's signals (its layout segment lists them all); add the missing signals to the layout segment "
                "and to the record line", pl.col("_seg_n_sig"), pl.col("_master").str.split("/").list.last(),
                pl.col("_master_n_sig")))))
    # WFDB: a segment is a single-segment record (wfdb's rdrecord fails on one of segments of its own, with a
    # TypeError); a record listed among its own segments never ends
    nested = real.join(ok.filter(pl.col("segments").is_not_null()).select(pl.col("srcfile").alias("_path")),
                       on="_path", how="semi")
    out.append(_found(
        "wfdb.nested_segment", nested, "_master",
        fmt("segment {} is itself a multi-segment record ({}.hea lists segments): a WFDB segment is a single-segment "
            "record, and wfdb cannot read this one; list the segments' own segments here instead (or re-export the "
            "record)", pl.col("name"), pl.col("name"))))
    # WFDB: a multi-segment record's segments are sampled at its frequency (wfdb joins them as if they were, without
    # a word: the time of every sample after such a segment is wrong)
    # (a frequency of 0 Hz, in either, is wfdb.sampling_frequency's: told once)
    seg_fs = real.filter(pl.col("_master_fs") > 0).join(
        ok.filter(_POSITIVE_FS).select(pl.col("srcfile").alias("_path"), pl.col("fs").alias("_seg_fs")), on="_path")
    out.append(_found(
        "wfdb.segment_rate",
        seg_fs.filter(pl.col("_seg_fs").is_not_null()  # (_master_fs > 0: none null)
                      & ((pl.col("_seg_fs") - pl.col("_master_fs")).abs() > 1e-9 * pl.col("_master_fs").abs())),
        "_path",
        fmt("this segment is sampled at {} Hz but its multi-segment header {} gives {} Hz: a record's segments share "
            "its sampling frequency; re-export the record (or make the segment a record of its own)",
            pl.col("_seg_fs"), pl.col("_master").str.split("/").list.last(), pl.col("_master_fs"))))
    out.append(_flat_name(ok, real))
    totals = segments.group_by("_master", "_master_len").agg(pl.col("length").cast(pl.Int128).sum().alias("_total"))
    out.append(_found(
        "wfdb.segment_length",
        totals.filter(pl.col("_master_len").is_not_null() & (pl.col("_master_len") != pl.col("_total"))), "_master",
        fmt("the record has {} samples but its segments add up to {}: make them agree", pl.col("_master_len"),
                  pl.col("_total"))))
    # Numerics: in a WFDB session folder (one holding <session_id>.hea), a CSV is the numerics file.
    wfdb_sessions = f.filter(pl.col("_waveforms") & pl.col("session_id").is_not_null()
                             & (pl.col("_name") == pl.col("session_id") + ".hea")).select("_dir").unique().collect()
    # A session folder (Telemetry|EEG/<session_id>/) of WFDB headers none of which is <session_id>.hea: segments
    # without the multi-segment header that joins them, or records named otherwise; the session has no record
    # (the headers of such folders grouped, not every session's first: nearly all sessions have their record)
    headed = (f.filter(pl.col("_waveforms") & pl.col("category").is_not_null() & pl.col("session_id").is_not_null()
                       & _IN_SESSION_FOLDER & (pl.col("_ext_l") == "hea"))
              .join(wfdb_sessions.lazy(), on="_dir", how="anti").group_by("_dir", "session_id").agg(pl.col("_name").sort()))
    out.append(_found(
        "wfdb.session_record", headed, pl.col("_dir") + "/",
        fmt("WFDB headers {} but no {}.hea: the procedure names a session's record <session_id>.<ext>; add the "
            "record's header (for segments, the multi-segment header listing them) or rename the record",
            _join_list(pl.col("_name")), pl.col("session_id"))))
    csvs = f.filter(pl.col("_waveforms") & pl.col("session_id").is_not_null() & (pl.col("_ext_l") == "csv")).select(
        "srcfile", "_dir", "_name", "session_id").collect().join(wfdb_sessions, on="_dir", how="semi")
    # <session_id>.csv is the name Waveform File Format v2.1 gives a high-frequency or annotation file (alarms, say)
    # in the submitted format, not a misnamed numerics file: only other CSV names are told
    misnamed = (pl.col("_name") != pl.col("session_id") + "n.csv") & (pl.col("_name") != pl.col("session_id") + ".csv")
    out.append(_found(
        "wfdb.numerics_name", csvs.filter(misnamed), "srcfile",
        fmt("a CSV in WFDB session {} named neither {}n.csv (the procedure's name for low-frequency \"numerics\", "
            "with an \"n\" before the extension) nor {}.csv (a high-frequency or annotation file): rename it",
            pl.col("session_id"), pl.col("session_id"), pl.col("session_id"))))
    # In any session folder (WFDB or another format): a file named <session_id>n.<ext> is named as the procedure names
    # the numerics file, which it asks for as a CSV ("a CSV file with a 'n' before the extension"; "saved as a CSV
    # file"): numerics in another format (a WFDB numerics record, Parquet) were told nothing
    out.append(_found(
        "wfdb.numerics_name",
        f.filter(pl.col("_waveforms") & pl.col("session_id").is_not_null() & _IN_SESSION_FOLDER & ~pl.col("_compressed")
                 & pl.col("_ext_l").ne_missing("csv")
                 & (pl.col("_name").str.replace(r"\.[^.]*$", "") == pl.col("session_id") + "n")),
        "srcfile",
        fmt("{} is named as the procedure names a session's low-frequency \"numerics\" file ({}n.csv) but is not a "
            "CSV: the procedure asks for numerics as a CSV file; write them as {}n.csv (or, if it holds no numerics, "
            "rename it)", pl.col("_name"), pl.col("session_id"), pl.col("session_id"))))
    return out


# A waveform file whose session is a Telemetry|EEG/<session_id>/ folder: not a flat file (first upload SOP) lying
# in Telemetry/ or EEG/, whose session is its own name's stamp (no folder to rename, no <session_id>.hea to hold)
_IN_SESSION_FOLDER = pl.col("layout").ne_missing("waveforms-flat")
# the start stamp a session folder's name may end in (classify._SESSION_STAMP): <date>_<time>
_SESSION_STAMP = r"_([0-9]{8}_[0-9]{6})$"
# The first upload SOP's waveform names: <person>_<YYYYMMDD>_<HHMMSS>_<duration in seconds>.<ext>
_FLAT_NAME = r"_(?P<date>[0-9]{8})_(?P<time>[0-9]{6})_(?P<duration>[0-9]+(?:\.[0-9]+)?)\.(?i:hea)$"
# a whole number of seconds in the name stands for a length up to a second longer
_DURATION_TOLERANCE_S = 1.0


def _flat_name(ok: pl.DataFrame, segments: pl.DataFrame) -> pl.LazyFrame:
    """The first upload SOP names a recording after its start (date and time) and its duration in seconds: a WFDB
    header (not a segment: <record>_0001 reads as a duration of 1 s) whose base date or time, or length, differ.
    A header without a base date or time is not compared on it; a frequency of 0 Hz is wfdb.sampling_frequency's."""
    named = (
        ok.lazy().filter(pl.col("_layout") == "waveforms-flat")
        .join(segments.lazy().select(srcfile="_path"), on="srcfile", how="anti")
        .with_columns(_g=pl.col("_name").str.extract_groups(_FLAT_NAME)).unnest("_g")
        .filter(pl.col("duration").is_not_null())
        .with_columns(
            _header_date=pl.col("base_date").str.replace_all("-", ""),
            _header_time=pl.col("base_time").str.head(8).str.replace_all(":", ""),
            _seconds=pl.when(pl.col("fs") > 0).then(pl.col("sig_len") / pl.col("fs")),
        )
    )
    start = (pl.col("_header_date") != pl.col("date")).fill_null(False) | (
        pl.col("_header_time") != pl.col("time")).fill_null(False)
    length = ((pl.col("_seconds") - pl.col("duration").cast(pl.Float64)).abs() > _DURATION_TOLERANCE_S).fill_null(False)
    told = pl.concat_str([
        pl.when(start).then(fmt("starts {} {}", pl.col("base_date").fill_null("(no date)"),
                                pl.col("base_time").fill_null("(no time)"))),
        pl.when(length).then(fmt("holds {} s ({} samples at {} Hz)", pl.col("_seconds").round(3).cast(pl.String),
                                 pl.col("sig_len").cast(pl.String), pl.col("fs").cast(pl.String))),
    ], separator=" and ", ignore_nulls=True)
    return _found("wfdb.name_mismatch", named.filter(start | length), "srcfile", fmt(
        "the name gives a recording started {}-{}-{} {}:{}:{} of {} s, but the header {}: name the record after its "
        "start and duration (or fix the header)", pl.col("date").str.slice(0, 4), pl.col("date").str.slice(4, 2),
        pl.col("date").str.slice(6, 2), pl.col("time").str.slice(0, 2), pl.col("time").str.slice(2, 2),
        pl.col("time").str.slice(4, 2), pl.col("duration"), told))


# A mapping's sampling_rate is "the nominal sampling rate for the channel ... as much precision as is known to you
# (e.g. 249.987 Hz)": a header's 250 Hz is that channel; a rate off by more than this share is another one
_RATE_TOLERANCE = 0.01


# The usual (UCUM) spellings of a waveform channel's units, where a header and a mapping disagree only in letter case
_USUAL_UNITS = ["mV", "uV", "nV", "V", "mmHg", "cmH2O", "kPa", "Pa", "mA", "uA", "A", "mL", "L", "L/min", "mL/s",
                "mL/min", "Cel", "degC", "ms", "s", "Hz", "bpm", "/min", "%", "mOhm", "Ohm", "kOhm", "NU"]


def _units_key(expr: pl.Expr) -> pl.Expr:
    """Units as compared: the micro sign and the Greek mu written as u (uV, µV and μV are one unit); case kept
    (mV is not MV)."""
    return expr.str.strip_chars().str.replace_all("[\u00b5\u03bc]", "u")


def _mapped(site: _Site, headers: pl.DataFrame) -> list[pl.LazyFrame]:
    """The WFDB (and EDF, BDF: _edf_signals) signals of a category (Telemetry, EEG) against its mapping file (Waveform
    File Format, 4.1.1: "For each signal in your data ... add a row" with its sampling_rate in Hz and its units; an EEG
    lead FP1 is as much a signal in EDF as in WFDB: the wfdb.* rules tell both). Only where the category's
    mapping file was read and maps a signal (metadata.* say what is wrong with one that is missing, unreadable or
    only a header row); a multi-segment
    record's signals are told once, at its multi-segment header."""
    category_of = {name.lower(): category for category, name in MAPPING_FILES.items()}
    # (one with only its header row maps no signal: metadata.mapping_missing says so, not a finding per record)
    maps = site.of_kind(KIND_MAPPING).filter(pl.col("_ok") & (pl.col("signals").list.len() > 0)).with_columns(
        _cat=pl.col("_name").str.to_lowercase().replace_strict(category_of, default=None, return_dtype=pl.String),
    ).filter(pl.col("_cat").is_not_null())
    if maps.height == 0:
        return []
    mapped = (maps.select("_cat", "signals").explode("signals").unnest("signals").drop_nulls("signal_id")
              .with_columns(_units=_units_key(pl.col("units"))))
    ok = headers.filter(pl.col("_ok"))
    masters = (
        ok.filter(pl.col("segments").is_not_null())
        .select(pl.col("srcfile").alias("_record"), "_dir", "segments").explode("segments").unnest("segments")
        .filter(pl.col("name").is_not_null() & (pl.col("name") != "~"))
        .select("_record", _header=pl.col("_dir") + "/" + pl.col("name") + ".hea")
        .unique("_header", keep="first")
    )
    signals = (
        # (a frequency of 0 Hz is wfdb.sampling_frequency's, not a rate the mapping disagrees with)
        ok.filter(pl.col("_category").is_in(maps["_cat"].unique().implode()) & (pl.col("signals").list.len() > 0)
                  & _POSITIVE_FS)
        .select(pl.col("srcfile").alias("_header"), pl.col("_category").alias("_cat"), "fs", "signals")
        .explode("signals").unnest("signals")
        .filter(pl.col("sig_name").is_not_null())
        .join(masters, on="_header", how="left")
        .with_columns(_record=pl.coalesce("_record", "_header"), _rate=pl.col("fs") * pl.col("samps_per_frame"),
                      _map=pl.lit("Metadata/") + pl.col("_cat").replace_strict(MAPPING_FILES, return_dtype=pl.String))
        .with_columns(_stem=pl.col("_record").str.split("/").list.last().str.strip_suffix(".hea"))
        .select(_SIGNAL_COLUMNS)
    )
    signals = pl.concat([signals, _edf_signals(site, maps["_cat"].unique())])
    unmapped = (
        signals.join(mapped.select("_cat", sig_name=pl.col("signal_id")).unique(), on=["_cat", "sig_name"], how="anti")
        .group_by("_record", "_stem", "_map").agg(pl.col("sig_name").unique().sort())
    )
    out = [_found("wfdb.unmapped_signal", unmapped, "_record", fmt(
        "record {}: signal{|s} {} {is|are} not in {}: add a row for {it|each} (signal_id, standardized_label, sampling_rate, "
        "units), as the Waveform File Format procedure asks for every signal in the data",
        pl.col("_stem"), _join_list(pl.col("sig_name"), 10), pl.col("_map"), n=pl.col("sig_name").list.len()))]
    both = signals.join(mapped, left_on=["_cat", "sig_name"], right_on=["_cat", "signal_id"], how="inner")
    rates = (
        # (the signals that agree, nearly all, left out before the group's texts are made: _disagreeing)
        _disagreeing(both.filter(pl.col("_rate").is_not_null() & pl.col("sampling_rate").is_not_null()),
                     (pl.col("sampling_rate") - pl.col("_rate")).abs() <= _RATE_TOLERANCE * pl.col("_rate"),
                     "_record", "_stem", "_map", "sig_name", "_rate")
        .group_by("_record", "_stem", "_map", "sig_name", "_rate")
        .agg(_mapped=pl.col("sampling_rate").unique().sort().cast(pl.String).str.join(" or "))
        .sort("sig_name", "_rate")
    )
    out.append(_mapping_disagrees("wfdb.mapping_rate", rates, "sampling rates", fmt(
        "{} {} Hz in the header, {} Hz in the mapping", pl.col("sig_name"), pl.col("_rate"), pl.col("_mapped")),
        "give each signal's nominal sampling rate in the mapping, or fix the header"))
    units = (
        # (_hunits is the group's: its header's units)
        _disagreeing(both.filter(pl.col("units").is_not_null() & (pl.col("_units") != ""))
                     .with_columns(_hunits=_units_key(pl.col("units"))),
                     pl.col("_units") == pl.col("_hunits"), "_record", "_stem", "_map", "sig_name", "units")
        .group_by("_record", "_stem", "_map", "sig_name", pl.col("units").alias("_header_units"))
        .agg(_mapped=pl.col("_units").unique().sort().str.join(" or "), _written=pl.col("units_written").first(),
             _case=(pl.col("_units").str.to_lowercase() == pl.col("_hunits").first().str.to_lowercase()).any(),
             _usual=pl.concat([pl.col("_hunits").first(), pl.col("_units")]).filter(
                 pl.concat([pl.col("_hunits").first(), pl.col("_units")]).is_in(_USUAL_UNITS)).first())
        .sort("sig_name")
    )
    # compared as wfdb reads the header ("µV" is read "V": the converter would take volts); told as the file has them
    header_units = pl.when(pl.col("_written").is_null()).then(pl.col("_header_units")).otherwise(fmt(
        "{} (which wfdb reads as {}: a WFDB header is ASCII text, write uV for µV)", pl.col("_written"),
        pl.col("_header_units")))
    # units that differ only in letter case (mV and MV, mmHg and mmhg): a unit's case is its meaning (UCUM: mV is
    # millivolts, MV megavolts), so they still disagree, but the finding says so and names the usual spelling, where one
    # of the two is it; "mV in the header, MV in the mapping" alone read as the same unit twice
    case = (pl.when(pl.col("_case") & pl.col("_usual").is_not_null())
            .then(pl.concat_str(pl.lit(" (only the letter case differs, and a unit's case is part of it: MV is megavolts, "
                                       "mV millivolts; the usual spelling is "), pl.col("_usual"), pl.lit(")")))
            .when(pl.col("_case")).then(pl.lit(" (only the letter case differs, and a unit's case is part of it: MV is "
                                               "megavolts, mV millivolts)"))
            .otherwise(pl.lit("")))
    out.append(_mapping_disagrees("wfdb.mapping_units", units, "units", pl.concat_str(fmt(
        "{} {} in the header, {} in the mapping", pl.col("sig_name"), header_units, pl.col("_mapped")), case),
        "give each signal's units in the mapping as the data holds them, or fix the header"))
    return out


# A mapped signal as _mapped compares it: its file (_header) and record (_record, _stem: told), category and mapping
# file, name, rate (Hz) and units (as read, and as written where reading changed them)
_SIGNAL_COLUMNS = ("_header", "_record", "_stem", "_cat", "_map", "sig_name", "_rate", "units", "units_written")
# EDF+ (BDF+) keeps its annotations (events, time-keeping) in a signal of this label: no signal of the data to map
_EDF_ANNOTATIONS = ("EDF Annotations", "BDF Annotations")


def _edf_signals(site: _Site, categories: pl.Series) -> pl.LazyFrame:
    """The signals of the readable EDF (BDF) headers of `categories` as _mapped compares them: label as sig_name,
    physical dimension as units (blank: not stated, not compared), samples per data record / its duration as rate.
    The record told is the file's name without .edf (the procedure names it after the session)."""
    edf = site.of_kind(KIND_EDF)
    return (
        edf.lazy().filter(pl.col("_ok") & pl.col("_category").is_in(categories.implode())
                          & (pl.col("signals").list.len() > 0))
        .select(pl.col("srcfile").alias("_header"), pl.col("_category").alias("_cat"), "signals")
        .explode("signals").unnest("signals")
        .filter(pl.col("label").is_not_null() & (pl.col("label") != "") & ~pl.col("label").is_in(_EDF_ANNOTATIONS))
        .select(
            "_header", _record=pl.col("_header"),
            _stem=pl.col("_header").str.split("/").list.last().str.replace(r"(?i)\.[eb]df$", ""), _cat="_cat",
            _map=pl.lit("Metadata/") + pl.col("_cat").replace_strict(MAPPING_FILES, return_dtype=pl.String),
            sig_name="label", _rate="fs", units=pl.when(pl.col("units") != "").then("units"),
            units_written=pl.lit(None, pl.String))
        .collect()
    )


def _disagreeing(rows: pl.DataFrame, agrees: pl.Expr, *group: str) -> pl.DataFrame:
    """The `rows` of the groups (a record's signal against its mapping rows) of which no row `agrees`: a window, row by
    row, so that the aggregation that words a finding runs on the few groups that disagree (on a site of 100k files,
    57k mapped signals: 1.35 s when every group was aggregated and then filtered, under load). Where every row agrees
    (a site whose mapping fits its data), none: the window, which hashes every row's group, is not made (a part of
    small100k, ~28k signals: ~10 ms of CPU each)."""
    if not rows.select((~agrees).fill_null(True).any()).item():
        return rows.clear()
    return rows.filter(~agrees.any().over(*group))


def _mapping_disagrees(rule: str, disagreeing: pl.LazyFrame, what: str, told: pl.Expr, fix: str) -> pl.LazyFrame:
    """One finding per record of the signals in `disagreeing` (header against mapping), each `told`, ten at most."""
    by_record = disagreeing.group_by("_record", "_stem", "_map").agg(told.alias("_told"))
    return _found(rule, by_record, "_record", fmt(
        f"record {{}}: {what} differ from {{}} ({{}}): {fix}", pl.col("_stem"), pl.col("_map"),
        pl.col("_told").list.head(10).list.join("; ")))


def _sessions(site: _Site, across: _Across) -> list[pl.LazyFrame]:
    """Session ids of today's layout (Waveforms/Telemetry|EEG/<session_id>/): integers (here), and distinct
    (_id_collisions, across parts)."""
    sessions = (
        site.files.lazy().filter(pl.col("_waveforms") & (pl.col("modality") == "Waveforms")
                                 & pl.col("category").is_not_null() & pl.col("session_id").is_not_null()
                                 & _IN_SESSION_FOLDER)
        .group_by("_top", "category", "session_id").agg(pl.col("_dir").min())
        .collect()
    )
    across.sessions.append(sessions)
    # A session folder named <...>_<YYYYMMDD>_<HHMMSS> gives its files' start (classify: the registry's datetime); one
    # whose stamp is no date (month 13) gave none, with no word, in an earlier edition's layout (v1.0's
    # Waveforms/<session>/) as in today's
    stamped = (
        site.files.lazy().filter(pl.col("_waveforms") & (pl.col("modality") == "Waveforms")
                                 & pl.col("session_id").is_not_null() & _IN_SESSION_FOLDER)
        .with_columns(_stamp=pl.col("session_id").str.extract(_SESSION_STAMP, 1))
        .filter(pl.col("_stamp").is_not_null()
                & pl.col("_stamp").str.strptime(pl.Datetime, "%Y%m%d_%H%M%S", strict=False).is_null())
        .group_by("_top", "session_id", "_stamp").agg(pl.col("_dir").min())
    )
    return [
        # [0-9], not \d: the regex engine's \d takes any script's digits (Arabic-Indic ٠١٢), no integer id.
        _found("waveforms.session_id", sessions.filter(~pl.col("session_id").str.contains(r"^[0-9]+$")),
               pl.col("_dir") + "/",
               fmt("session id {} is not an integer: the waveform procedure asks for integer session ids; "
                         "rename the folder and its files", pl.col("session_id"))),
        _found("waveforms.session_id", stamped, pl.col("_dir") + "/",
               fmt("session folder {} ends in the start stamp {}, which is no real date and time (YYYYMMDD_HHMMSS): "
                   "its files' start is not known (the registry's datetime stays empty); rename the folder and its "
                   "files with an integer session id, as the waveform procedure asks, or with the recording's real "
                   "start", pl.col("session_id"), pl.col("_stamp"))),
    ]


def _id_collisions(across: _Across) -> list[pl.LazyFrame]:
    """A session id used by two recordings (of any parts)."""
    # Session ids are integers: 0900 and 900 are one id (compared as person and accession ids are)
    sessions = pl.concat(across.sessions).with_columns(_key=_norm_id(pl.col("session_id")))
    owner = pl.concat_str("_top", "category", "session_id", separator="/")
    owners = sessions.group_by("_key").agg(_owners=_first_of(owner), _n=owner.n_unique()).filter(pl.col("_n") > 1)
    return [_found("waveforms.id_collision", sessions.join(owners, on="_key"), pl.col("_dir") + "/",
                   fmt("session id {} is used by {} recordings ({}): give every recording (and telemetry and EEG) its "
                       "own id", pl.col("session_id"), pl.col("_n"), _counted_list(pl.col("_owners"), pl.col("_n"))))]


# A RECORDS file speaks for the folder it lies in and everything below it (one at the root: for the whole site).
_SCOPE = pl.when(pl.col("_n") == 1).then(pl.lit("")).otherwise(pl.col("_dir") + "/")
# (the header's site-relative path: an entry is relative to its RECORDS file's folder)
_ABSENT = pl.when(pl.col("_entry").str.contains("\\", literal=True)).then(fmt(
    # (written on Windows: "Telemetry\\3004\\3004" was told only as absent, and the file named no fix)
    "lists record {} with '\\' between its folders, which WFDB reads as part of a name, so no header is found for it: "
    "write the line with '/' ({})", pl.col("_entry"), pl.col("_entry").str.replace_all("\\", "/", literal=True),
)).when(pl.col("_entry").str.contains(r"(^|/)\.\.(/|$)")).then(fmt(
    # (a record of another folder by '..': its header was told "not on the site", of one that is there)
    "lists record {} by a path with '..', out of the RECORDS file's folder: a RECORDS file lists the records under its "
    "own folder, by their paths from it; list the record in the RECORDS file of a folder above it, or remove the line",
    pl.col("_entry"),
)).when(pl.col("_folder")).then(fmt(
    "lists folder {}/ but no WFDB header lies under {}/: remove the line, or add the folder's records",
    pl.col("_entry"), pl.col("_path"))).otherwise(fmt(
        "lists record {} but its header ({}.hea) is not on the site: add the record or remove the line",
        pl.col("_entry"), pl.col("_path")))


def _entries(readable: pl.DataFrame) -> pl.DataFrame:
    """The records that readable RECORDS files list: srcfile, _scope, _entry, _path, _bare, _folder. An entry ending
    in / names a folder of records (PhysioNet's nested databases: that folder keeps a RECORDS file of its own)."""
    return (
        readable.select("srcfile", _scope=_SCOPE, _entry=pl.col("records"))
        .explode("_entry")
        .filter(pl.col("_entry").is_not_null())
        .with_columns(_folder=pl.col("_entry").str.ends_with("/"),
                      _entry=pl.col("_entry").str.strip_chars_end("/").str.strip_suffix(".hea")
                      .str.strip_prefix("./").str.strip_chars_start("/"))
        .with_columns(_path=pl.col("_scope") + pl.col("_entry"), _bare=~pl.col("_entry").str.contains("/"))
    )


def _records(site: _Site, headers: pl.DataFrame, across: _Across) -> list[pl.LazyFrame]:
    """RECORDS files are optional (v1.0 kept one at the site root, older layouts one per person or session).
    Where one is kept, it lists records that exist, and every record under its folder. A root RECORDS lists
    records of every part: the ones found go to `across`, and _records_absent names the rest."""
    records = site.of_kind(KIND_RECORDS)
    out = [_found("records.unreadable", records.filter(pl.col("error").is_not_null()), "srcfile",
                  _unreadable("RECORDS file", "write one record name per line as UTF-8 text"))]
    readable = records.filter(pl.col("_ok"))
    if readable.height == 0:
        return out
    entries = _entries(readable)
    names = headers.select("srcfile", "_dir", "_stem", _path=pl.col("_dir") + "/" + pl.col("_stem"))
    segment_names = (
        headers.filter(pl.col("_ok") & pl.col("segments").is_not_null())
        .select("_dir", pl.col("segments").list.eval(pl.element().struct.field("name")).alias("_stem"))
        .explode("_stem")
    )
    # Headers under a folder: joined on each header's ancestor folders (a path is a few levels deep).
    parts = (pl.col("_dir") + "/").str.split("/")
    depth = int(names.select(parts.list.len().max()).item() or 0)
    ancestors = pl.concat_list([pl.lit("")] + [
        pl.when(parts.list.len() > k).then(parts.list.head(k).list.join("/") + "/") for k in range(1, depth)])
    under = names.select("srcfile", _scope=ancestors).explode("_scope").drop_nulls("_scope")
    records_ = entries.filter(~pl.col("_folder"))
    by_path = records_.join(names.select("_path", _header=pl.col("srcfile")), on="_path", how="inner")
    by_name = (
        records_.filter(pl.col("_bare"))
        .join(names.select(pl.col("_stem").alias("_entry"), "_dir", _header=pl.col("srcfile")), on="_entry")
        .filter((pl.col("_dir") + "/").str.starts_with(pl.col("_scope")))
        .drop("_dir")
    )
    # a folder entry lists the records under it (their own RECORDS file, if kept, is checked as any other)
    by_folder = (entries.filter(pl.col("_folder")).with_columns(_under=pl.col("_path") + "/")
                 .join(under.select(_under="_scope", _header="srcfile"), on="_under"))
    found = pl.concat([frame.select("srcfile", "_entry", "_header") for frame in (by_path, by_name, by_folder)])
    at_root = readable.filter(pl.col("_n") == 1).select("srcfile")
    across.records_found.append(found.join(at_root, on="srcfile", how="semi").select("srcfile", "_entry"))
    out.append(_found("records.absent", entries.join(at_root, on="srcfile", how="anti")
                      .join(found, on=["srcfile", "_entry"], how="anti"), "srcfile", _ABSENT))
    # Headers under a RECORDS file's folder
    scopes = readable.select(_scope=_SCOPE).unique()
    covered = under.join(scopes, on="_scope", how="semi").select("srcfile").unique()
    unlisted = (
        names.join(segment_names, on=["_dir", "_stem"], how="anti")
        .join(covered, on="srcfile", how="semi")
        .join(found.select(pl.col("_header").alias("srcfile")).unique(), on="srcfile", how="anti")
    )
    out.append(_found("records.unlisted", unlisted, "srcfile",
                      fmt("record {} is not listed in the RECORDS file kept for its folder: add it (RECORDS "
                                "files are optional; or remove them)", pl.col("_stem"))))
    return out


def _records_absent(site: _Site, across: _Across) -> list[pl.LazyFrame]:
    """The records a root RECORDS lists that no part holds."""
    at_root = site.of_kind(KIND_RECORDS).filter(pl.col("_ok") & (pl.col("_n") == 1))
    if at_root.height == 0:
        return []
    found = pl.concat(across.records_found)
    return [_found("records.absent", _entries(at_root).join(found, on=["srcfile", "_entry"], how="anti"), "srcfile",
                   _ABSENT)]
