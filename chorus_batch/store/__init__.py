"""The manifest store, by job:

  schema.py      tables from the column registry (frames.MANIFEST_TABLES), numbered migrations
  lock.py        one run at a time per manifest
  manifest.py    opening, reading the previous version, committing a version, the runs log, the state cache
  validation.py  header facts by content, findings per version
  snapshots.py   Parquet snapshots per version, and their review reader
  remote.py      a manifest in Azure (--db az://...): a leased local working copy, uploaded after success
"""

from .manifest import CHANGES_SCHEMA, CommitResult, Manifest, VersionRecord
from .schema import SCHEMA_VERSION

__all__ = ["CHANGES_SCHEMA", "SCHEMA_VERSION", "CommitResult", "Manifest", "VersionRecord"]
