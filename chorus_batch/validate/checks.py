"""check(current, facts): every rule, as polars expressions over the two frames (pure).

The rules are grouped by area: checks_layout (folders, persons, superseded layouts, paths and
files), checks_metadata (Metadata/), checks_omop (OMOP tables and the waveform-visit links),
checks_waveforms (session ids, WFDB headers and RECORDS), checks_images (DICOM headers) and
checks_registries (the linkage registries a site ships); site.py holds what they share.
"""

from __future__ import annotations

import polars as pl

from ..frames import FINDINGS_SCHEMA
from .checks_images import _dicom
from .checks_layout import _files, _layout, _persons
from .checks_metadata import _metadata
from .checks_omop import _links, _omop
from .checks_registries import _registries
from .checks_waveforms import _records, _sessions, _wfdb
from .rules import _SEVERITY, KIND_WFDB
from .site import _FINDING_COLUMNS, _Site


def check(current: pl.DataFrame, facts: pl.DataFrame) -> pl.DataFrame:
    """All rules over the current files and their facts; FINDINGS_SCHEMA sorted by srcfile, rule."""
    site = _Site(current, facts)
    wfdb = site.of_kind(KIND_WFDB)
    found = [
        *_layout(site),
        *_omop(site),
        *_links(site),
        *_persons(site),
        *_metadata(site),
        *_sessions(site),
        *_wfdb(site, wfdb),
        *_records(site, wfdb),
        *_dicom(site),
        *_registries(site),
        *_files(site),
    ]
    out = pl.concat([f.cast(_FINDING_COLUMNS) for f in found]).unique().collect()  # type: ignore[arg-type]
    return (
        out.with_columns(severity=pl.col("rule").replace_strict(_SEVERITY, return_dtype=pl.String))
        .select(*FINDINGS_SCHEMA)
        .sort("srcfile", "rule", "message")
    )
