"""Reports of a manifest: the run summary (text and JSON) and the HTML data-quality page.

    from chorus_batch.report import summary_text, write_report
    print(summary_text(result))                                    # a run, for a person
    info = write_report("site_manifest.sqlite", "report.html")     # a version, as one HTML file

`summary` holds the text and JSON summaries; `html` gathers the page's data from a manifest and
renders `templates/report.html.j2`; `plots` draws its figures. The HTML part (matplotlib, Jinja2)
loads on first use, so importing this package for a run's summary stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .importing import import_dict, import_text
from .submission import upload_dict, upload_text, verify_dict, verify_text
from .summary import (
    changes_text,
    findings_dict,
    findings_text,
    frame_text,
    head_text,
    status_csv,
    status_dict,
    status_text,
    summary_dict,
    summary_text,
)

if TYPE_CHECKING:
    from .html import SECTION_IDS, ReportInfo, write_report

__all__ = ["SECTION_IDS", "ReportInfo", "changes_text", "findings_dict", "findings_text", "frame_text", "head_text", "import_dict", "import_text",
           "status_csv", "status_dict", "status_text", "summary_dict", "summary_text", "upload_dict", "upload_text",
           "verify_dict", "verify_text", "write_report"]

_LAZY = {"write_report", "ReportInfo", "SECTION_IDS"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(".html", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
