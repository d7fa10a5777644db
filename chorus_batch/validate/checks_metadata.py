"""The rules on Metadata/ (Waveform File Format v2.1): READINESS.md and SUBMISSION.md present and
complete, and a mapping CSV per waveform category with the columns the central WFDB conversion needs."""

from __future__ import annotations

import polars as pl

from ..frames import fmt
from .rules import (
    KIND_MAPPING,
    KIND_MARKDOWN,
    MAPPING_COLUMNS,
    MAPPING_FILES,
    MAPPING_TIME_COLUMNS,
    SUBMISSION_SECTIONS,
)
from .site import _found, _one, _Site, _unreadable, shared_files


def _elsewhere(site: _Site, name: str) -> str:
    """Where a Metadata file the rules did not find lies all the same, as the clause that says so: a file of that
    name (any case) that no rule reads, among the files every part of a check holds (the root, a subfolder of
    Metadata/, OMOP/). "no Metadata/READINESS.md: add it" was said of a site whose READINESS.md lay in Metadata/docs/."""
    there = (site.files.lazy().filter(shared_files(pl.col("srcfile")) & pl.col("kind").is_null()
                                      & (pl.col("_name").str.to_lowercase() == name.lower()))
             .select(pl.col("srcfile").min()).collect().item())
    if there is not None:
        return (f" ({there} is one, where it is not read: move it directly under Metadata/, where the Waveform File "
                f"Format procedure puts it)")
    # the same name with another extension (SUBMISSION.txt, Telemetry_mapping.xlsx): "add it" was said beside it
    stem = name.lower().rpartition(".")[0] + "."
    other = (site.files.lazy().filter(shared_files(pl.col("srcfile")) & pl.col("kind").is_null()
                                      & pl.col("_name").str.to_lowercase().str.starts_with(stem))
             .select(pl.col("srcfile").min()).collect().item())
    return "" if other is None else (f" ({other} is one, not read: the Waveform File Format procedure names the file "
                                     f"{name}; write it as Metadata/{name}"
                                     + (", comma-delimited)" if name.endswith(".csv") else ")"))


def _metadata(site: _Site) -> list[pl.LazyFrame]:
    waveforms = site.files.lazy().filter(pl.col("_waveforms") & (pl.col("modality") == "Waveforms")).select(
        "category").collect()
    if waveforms.height == 0:
        return []
    md = site.of_kind(KIND_MARKDOWN).with_columns(_doc=pl.col("_name").str.to_lowercase())
    mappings = site.of_kind(KIND_MAPPING).with_columns(_doc=pl.col("_name").str.to_lowercase())
    out: list[pl.LazyFrame] = [
        _found("metadata.unreadable", md.filter(pl.col("error").is_not_null()), "srcfile",
               _unreadable("file", "write it as UTF-8 text")),
        _found("metadata.unreadable", mappings.filter(pl.col("error").is_not_null()), "srcfile",
               _unreadable("mapping file", "write it as UTF-8 comma-delimited text with a header row, a row per "
                                           "signal")),
    ]
    for name in ("READINESS.md", "SUBMISSION.md"):
        if md.filter(pl.col("_doc") == name.lower()).height == 0:
            out.append(_one("metadata.missing", f"Metadata/{name}",
                            f"the site has waveforms but no Metadata/{name}" + (_elsewhere(site, name) or
                            ": add it (see the Waveform File Format procedure for what it holds)")))
    categories = set(waveforms["category"].drop_nulls().unique().to_list())
    for category, name in MAPPING_FILES.items():
        if category not in categories:
            continue
        mapping = mappings.filter(pl.col("_doc") == name.lower())
        if mapping.height == 0:
            out.append(_one("metadata.mapping_missing", f"Metadata/{name}",
                            f"the site has {category} waveforms but no Metadata/{name}" + (_elsewhere(site, name) or
                            f": add one row per signal with {', '.join(MAPPING_COLUMNS)} and timestamp_id (or "
                            f"start_time and end_time)")))
        # only a header row maps no signal: the procedure asks for a row for each signal in the data
        out.append(_found("metadata.mapping_missing", mapping.filter(pl.col("_ok") & (pl.col("rows") == 0)), "srcfile",
                          pl.lit(f"the site has {category} waveforms but {name} has only its header row, no signal "
                                 f"mapped: add a row for each signal in your {category} data")))

    parsed = mappings.filter(pl.col("_ok"))
    has = [pl.col("columns").list.contains(c) for c in MAPPING_COLUMNS]
    timed = pl.any_horizontal([pl.all_horizontal([pl.col("columns").list.contains(c) for c in group])
                               for group in MAPPING_TIME_COLUMNS])
    # The columns the header lacks, each by name: "needs signal_id, standardized_label, sampling_rate, units" left the
    # site to find the one it lacks; one written with spaces or hyphens ("Sampling Rate") is named as written
    spelt = pl.col("columns").list.eval(pl.element().str.replace_all(r"[\s\-]+", "_"))

    def lacking(column: str) -> pl.Expr:
        written = pl.col("columns").list.eval(
            pl.element().filter(pl.element().str.replace_all(r"[\s\-]+", "_") == column)).list.first()
        return pl.when(~pl.col("columns").list.contains(column)).then(pl.when(spelt.list.contains(column)).then(
            fmt(f"{column} (written '{{}}': name it {column})", written)).otherwise(pl.lit(column)))

    stream = [c for group in MAPPING_TIME_COLUMNS if len(group) > 1 for c in group]
    time_lacking = pl.when(timed).then(None).when(pl.any_horizontal([pl.col("columns").list.contains(c) for c in stream])).then(
        # half of the stream-based pair: the other half is what it lacks
        pl.concat_list([lacking(c) for c in stream]).list.drop_nulls().list.join(", ")
        + pl.lit(" (a stream-based mapping has start_time and end_time)")
    ).when(spelt.list.contains("timestamp_id")).then(lacking("timestamp_id")).otherwise(
        pl.lit("timestamp_id (pair-based), or start_time and end_time (stream-based)"))
    missing = pl.concat_list([lacking(c) for c in MAPPING_COLUMNS] + [time_lacking]).list.drop_nulls().list.join("; ")
    out.append(_found(
        "metadata.mapping_columns",
        parsed.filter((pl.col("delimiter") != ",") | ~pl.all_horizontal(has) | ~timed),
        "srcfile",
        # a header split by another delimiter holds the right names: say what is wrong with it, not that they lack
        pl.when(pl.col("delimiter") != ",").then(fmt(
            "the header row is split by {}, not commas: write the mapping comma-delimited, one row per signal",
            pl.col("delimiter").replace_strict({"\t": "tabs", ";": "semicolons", "|": "pipes"},
                                               default=pl.col("delimiter"), return_dtype=pl.String)))
        .otherwise(fmt("the header ({}) lacks {}: the Waveform File Format procedure asks for the columns {} and "
                       "timestamp_id (or start_time and end_time), one row per signal, comma-delimited",
                       pl.col("columns").list.join(","), missing, pl.lit(", ".join(MAPPING_COLUMNS))))))
    # rows without a time variable in a header without its columns: told above, by the column, not row by row
    parsed = parsed.with_columns(no_time=pl.when(timed).then(pl.col("no_time")).otherwise(0))
    counts = ("no_id", "bad_rate", "bad_label", "no_units", "no_time")
    values = parsed.filter(pl.col("rows").is_not_null()
                           & (pl.sum_horizontal([pl.col(c).fill_null(0) for c in counts]) > 0))
    told = {
        "no_id": "without a signal_id",
        "bad_rate": "with a sampling_rate that is not a positive number (Hz)",
        "bad_label": "with a standardized_label that is not an ISO/IEEE 11073 label (MDC_...)",
        "no_units": "without units (a string giving the channel's units)",
        "no_time": "without their time variable (timestamp_id, or start_time and end_time)",
    }
    out.append(_found(
        "metadata.mapping_values", values, "srcfile",
        fmt("rows the Waveform File Format procedure would not accept: {} (e.g. {}): fix those rows",
            # only the problems the file has, each with its count
            pl.concat_list([pl.when(pl.col(c).fill_null(0) > 0).then(
                pl.concat_str(pl.col(c).cast(pl.String), pl.lit(" " + text))) for c, text in told.items()])
            .list.drop_nulls().list.join(", "),
            # a signal_id quoted over two lines would break the report's one line per finding
            pl.col("examples").list.join("; ").str.replace_all(r"[\r\n]+", " "))))

    # Waveform-Data 6.2: "Fill out a waveform readiness checklist": a READINESS.md without a checklist item ("TODO",
    # the items written as plain bullets) has none ticked, and was passed
    readiness = md.filter(pl.col("_ok") & (pl.col("_doc") == "readiness.md")
                          & ((pl.col("unchecked").list.len() > 0) | (pl.col("checked").fill_null(0) == 0)))
    out.append(_found(
        "metadata.readiness_unchecked", readiness, "srcfile",
        pl.when(pl.col("unchecked").list.len() == 0).then(pl.lit(
            "no checklist item (\"- [x] ...\"): fill out the waveform readiness checklist of the procedure's template, "
            "ticking each item the submission meets"))
        .otherwise(fmt("{} checklist item{|s} not ticked (e.g. \"{}\"): meet {it|them} and tick {it|them}, or say why in "
                  "SUBMISSION.md", pl.col("unchecked").list.len(), pl.col("unchecked").list.first(),
                  n=pl.col("unchecked").list.len()))))
    submission = md.filter(pl.col("_ok") & (pl.col("_doc") == "submission.md"))
    headings = pl.col("headings").list.join("\n").str.to_lowercase()
    lacking = pl.concat_list([
        pl.when(~pl.any_horizontal([headings.str.contains(word, literal=True) for word in words])).then(pl.lit(topic))
        for topic, words in SUBMISSION_SECTIONS.items()
    ]).list.drop_nulls()
    out.append(_found(
        "metadata.submission_sections",
        submission.with_columns(_lacking=lacking).filter(pl.col("_lacking").list.len() > 0), "srcfile",
        fmt("no section (a heading, or a label of the template answered: 'Hospital name: ...') on: {}; add them as "
            "the Waveform File Format procedure asks", pl.col("_lacking").list.join("; "))))
    # Waveform File Format 4.1: SUBMISSION.md describes each variable, its data type, and the time units of the sample
    # times; the template asks them in a table of variables, whose rows left blank (or a table of none) answered nothing
    tabled = submission.filter(pl.col("variables").is_not_null()
                               & ((pl.col("variables") == 0) | (pl.col("n_variable_gaps").fill_null(0) > 0)))
    out.append(_found(
        "metadata.submission_answers", tabled, "srcfile",
        pl.when(pl.col("variables") == 0).then(pl.lit(
            "the table of variables (Variable name | Description | Data type | Unit) describes no variable: add a row "
            "for each variable of your waveform format, with its description, data type and unit (the time units of "
            "the variables that give the samples' times), as the Waveform File Format procedure asks"))
        .otherwise(fmt(
            "{} row{|s} of the table of variables leave{s|} answers out (e.g. {}): the Waveform File Format procedure "
            "asks for each variable's description and data type, and the time units (ms, µs, epoch seconds, ...) of "
            "those that give the samples' times; fill them in", pl.col("n_variable_gaps"),
            pl.col("variable_gaps").list.head(3).list.join("; ")))))
    # Waveform File Format 4.1 and 4.1.1: a stream-based submission (start_time and end_time in its mapping) says in
    # SUBMISSION.md whether those times are at the start or the end of the first and last samples
    streamed = (parsed.filter(pl.all_horizontal([pl.col("columns").list.contains(c) for c in stream]))
                .select(pl.col("srcfile").min()).item())
    if streamed is not None:
        out.append(_found(
            "metadata.submission_answers", submission.filter(~pl.col("sample_edges").fill_null(True)), "srcfile",
            pl.lit(f"{streamed} is stream-based (start_time, end_time), but SUBMISSION.md says nothing of the first or "
                   f"last sample: say whether each stream's start_time is at the start or the end of its first sample, "
                   f"and end_time at the start or the end of its last sample, as the Waveform File Format procedure "
                   f"asks")))
    return out
