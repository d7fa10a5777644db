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

from ..frames import FINDINGS_SCHEMA
from .checks import check
from .kinds import facts_needed
from .readers import FACTS_SCHEMA, BadContent, extract_facts, parse_wfdb_header, read_facts
from .rules import CSV_KINDS, KINDS, REQUIRED_TABLES, RULES, Rule

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
