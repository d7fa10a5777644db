"""Check a site submission against the CHoRUS procedures: the rules engine of `validate`.

Three steps, so that a nightly run over a million files reads only what is new:

  facts_needed(current)   which files a rule must look inside, and as what kind
                          (kinds.py: pure, from the paths)
  extract_facts(...)      reads those headers and tables (readers.py: I/O); facts depend only on
                          the content, so they are keyed by (kind, md5) and can be cached for ever
  check(current, facts)   every rule, as polars expressions over the two frames (checks.py and
                          its checks_* modules by area, over site.py's _Site: pure)

The procedures themselves (the rules, the OMOP tables, the WFDB formats, the file kinds) are
data in rules.py. Importing this package stays light (`validate --help` lists RULES): pydicom
and wfdb are imported only when files of their kind are read. The names below are re-exports:
to replace one (say read_facts in a test), patch it in its module (readers.read_facts).
"""

import importlib
from typing import TYPE_CHECKING, Any

from ..frames import FACTS_SCHEMA, FINDINGS_SCHEMA

if TYPE_CHECKING:
    from .checks import check
    from .kinds import facts_needed
    from .readers import BadContent, extract_facts, parse_wfdb_header, read_facts
    from .rules import CSV_KINDS, KINDS, REQUIRED_TABLES, RULES, Rule

# Each name loads its module on first use: a run whose findings are cached (a no-change night) imports none of
# the checks (18-36 ms of its start-up, `python -X importtime`).
_LAZY = {"check": "checks", "facts_needed": "kinds", "BadContent": "readers", "extract_facts": "readers",
         "parse_wfdb_header": "readers", "read_facts": "readers", "CSV_KINDS": "rules", "KINDS": "rules",
         "REQUIRED_TABLES": "rules", "RULES": "rules", "Rule": "rules"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CSV_KINDS",
    "FACTS_SCHEMA",
    "FINDINGS_SCHEMA",
    "KINDS",
    "REQUIRED_TABLES",
    "RULES",
    "BadContent",
    "Rule",
    "check",
    "extract_facts",
    "facts_needed",
    "parse_wfdb_header",
    "read_facts",
]
