"""check(current, facts): every rule, as polars expressions over the two frames (pure).

The rules are grouped by area: checks_layout (folders, persons, superseded layouts, paths and
files), checks_metadata (Metadata/), checks_omop (OMOP tables and the waveform-visit links),
checks_waveforms (session ids, WFDB headers and RECORDS), checks_images (DICOM headers) and
checks_registries (the linkage registries a site ships); site.py holds what they share.

A large site is checked in parts, a few person folders at a time, so that memory follows a part's
size, not the site's. Every part holds the files of OMOP/, Metadata/ and the root, which the rules of
every person folder read. The few rules that look across person folders (the same content in two,
a session or accession id used twice, a person without a folder, a file the registries or a root RECORDS name
but no part holds, layouts of earlier editions) gather a row per folder or session from each part
(site._Across) and conclude once all parts are done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import polars as pl

from ..frames import FINDINGS_SCHEMA
from .checks_images import _accessions, _dicom, _uids_shared
from .checks_layout import (_duplicates, _files, _layout, _name_clashes, _no_folder, _no_omop, _persons,
                            _split_persons, _superseded, _unportable_names)
from .checks_metadata import _metadata
from .checks_omop import _links, _omop, _unknown_sessions
from .checks_registries import _counted, _not_on_site, _registries, point_to_renames, renamed_folders
from .checks_waveforms import _edf, _id_collisions, _mapped, _records, _records_absent, _sessions, _wfdb
from .rules import _SEVERITY, KIND_WFDB
from .site import (_FINDING_COLUMNS, _IN_MEMORY_ROWS, NOTHING, FactsOf, _Across, _Site, collected,
                   modalities_held, shared_files)


def check(current: pl.DataFrame, facts: pl.DataFrame | FactsOf, *, parts: pl.Series | None = None,
          done: Callable[[int], None] | None = None, untaken: dict[str, str] | None = None,
          renamed: pl.DataFrame | None = None) -> pl.DataFrame:
    """All rules over the current files and their facts; FINDINGS_SCHEMA sorted by srcfile, rule.

    `facts`: the facts of the files (FACTS_SCHEMA), or a function giving those of the (kind, md5) rows it is
    asked for. `parts`: the part each file is checked in, by row (None: all in one); the findings are the
    same however the files are split, as long as a person folder lies in one part. `done(n)`: n more files
    checked, after each part (for a progress counter). `untaken`: the paths the run saw but took no file of
    (site.untaken of its recorded problems), which no rule calls missing. `renamed`: the top folders the manifest
    recorded as renamed up to this version (checks_registries.RENAMED_SCHEMA; None: not known, a fresh manifest)."""
    # a small site's plans by polars' in-memory engine (site._IN_MEMORY_ROWS): the many small collects of every rule
    with pl.Config(engine_affinity="in-memory") if current.height < _IN_MEMORY_ROWS else contextlib.nullcontext():
        return _check(current, facts, parts, done, untaken, renamed)


def _check(current: pl.DataFrame, facts: pl.DataFrame | FactsOf, parts: pl.Series | None,
           done: Callable[[int], None] | None, untaken: dict[str, str] | None,
           renamed: pl.DataFrame | None) -> pl.DataFrame:
    across, decoded_shared = _Across(), {}  # type: ignore[var-annotated]
    found, site = [], None
    held = modalities_held(current) if parts is not None else None  # (what the rules ask of the whole site)
    for i, (rows, new) in enumerate(_parts(current, parts)):
        site = None  # one part's frames at a time
        site = _Site(rows, facts, decoded_shared, untaken, held=held)
        found.append(_in_part(site, across, first=i == 0))
        if done is not None:
            done(new)
    found.append(_across(site, current, across))  # type: ignore[arg-type]
    said, told = renamed_folders(site, current, renamed)  # type: ignore[arg-type]
    found += [f.cast(_FINDING_COLUMNS).collect() for f in said if f is not NOTHING]  # type: ignore[arg-type]
    # Sorted, then a row equal to the one before it dropped: the same as unique() then sort, in a third of the
    # memory (486k findings of 300k files holding one content, each a message of 176 characters: 251 MiB more
    # than the parts themselves with unique() first, 67 MiB so; a 1M-file site of one content peaked at 1.24 GB).
    out = pl.concat(found, rechunk=False).sort("srcfile", "rule", "message")
    found.clear()
    out = point_to_renames(out, told)
    repeated = pl.all_horizontal(pl.col(c).eq_missing(pl.col(c).shift(1)) for c in _FINDING_COLUMNS)
    return (
        out.filter(~repeated)
        .with_columns(severity=pl.col("rule").replace_strict(_SEVERITY, return_dtype=pl.String))
        .select(*FINDINGS_SCHEMA)
    )


def _parts(current: pl.DataFrame, parts: pl.Series | None) -> Iterator[tuple[pl.DataFrame, int]]:
    """The files of each part (made one at a time), each with the files every part holds; and how many of
    them no earlier part held."""
    if parts is None:
        yield current, current.height
        return
    shared = current.select(shared_files(pl.col("srcfile"))).to_series()
    ids = parts.filter(~shared).unique().sort().to_list()
    if not ids:
        yield current, current.height
    n_shared = int(shared.sum())
    for i, k in enumerate(ids):
        rows = current.filter(shared | (parts == k))
        yield rows, rows.height - (n_shared if i else 0)


def _in_part(site: _Site, across: _Across, *, first: bool = True) -> pl.DataFrame:
    """The findings of one part's files; what the rules across folders need of it goes to `across`. The rules that
    read only the files every part holds (OMOP/'s tables: _omop) run in the `first` part alone: each other part found
    the same again, dropped as repeated (0.03 s of CPU a part, small100k; a 1M-file site has 16 parts); so do the
    rules on the registries' own rows (checks_registries._own)."""
    wfdb = site.of_kind(KIND_WFDB)
    found = [
        *_layout(site),
        *(_omop(site) if first else []),
        *_links(site, across),
        *_persons(site, across),
        *_metadata(site),
        *_sessions(site, across),
        *_wfdb(site, wfdb),
        *_edf(site),
        *_mapped(site, wfdb),
        *_records(site, wfdb, across),
        *_dicom(site, across),
        *_registries(site, first=first),
        *_files(site),
        site.unread(),  # last: after every rule has decoded the kinds it reads
    ]
    return _collected(found, site.files.height, unique=True)


def _across(site: _Site, current: pl.DataFrame, across: _Across) -> pl.DataFrame:
    """The rules that look across person folders, once every part has been checked. `site`: the last part
    (these rules read only the files every part holds of it); `current`: all the files, of which they read a
    few columns."""
    found = [
        *_superseded(current),
        *_no_omop(site, across),
        *_no_folder(site, across),
        *_split_persons(across),
        *_duplicates(current, across),
        *_name_clashes(current),
        *_unportable_names(current),
        *_id_collisions(across),
        *_accessions(across),
        *_uids_shared(across),
        *_unknown_sessions(site, across),
        *_records_absent(site, across),
        *_not_on_site(site, current),
        *_counted(site, current),
    ]
    return _collected(found, current.height)


def _collected(found: list[pl.LazyFrame], rows: int, *, unique: bool = False) -> pl.DataFrame:
    """The rows of the rules' finding frames, as one frame; those known to hold none (NOTHING) left out."""
    kept = [f.cast(_FINDING_COLUMNS) for f in found if f is not NOTHING]
    if not kept:
        return NOTHING.collect()
    out = pl.concat(kept)
    return collected(out.unique() if unique else out, rows)

