"""What validation keeps in the manifest: header facts by content (read once, whatever the
file's name), and each version's findings and whether its check was complete."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ..frames import FACTS_SCHEMA, FINDINGS_SCHEMA, fetched_frame, schema_of
from ..times import iso, utc_now

if TYPE_CHECKING:
    from .manifest import Manifest

# What the validation rules read of each current file (and the root to open it from). Not the start and duration the
# path gives (start_date, start_time, duration_s): no rule reads them (an EDF header's own are its facts), and each
# column read costs (100k files: 0.164 s of CPU with them, 0.148 without), and is copied into every part.
VALIDATION_SCHEMA = schema_of("source_files", (
    "srcfile", "size", "md5", "modality", "person_id", "session_id", "segment", "parse_error", "category", "layout",
    "root_id", "etag", "mtime_ns"))


# The cache's keys are looked up only when it holds more than this many times the pairs wanted; otherwise all are
# read at once (100k files, 62k pairs of a cache of 62k: 0.36 s looked up through a temporary table, 0.02 s read)
_LOOKUP_RATIO = 4


class ValidationCache:
    def __init__(self, manifest: "Manifest"):
        self.manifest = manifest

    def is_validated(self, label: str) -> bool:
        """Checked, by the rules of this release (a version checked by other rules is checked again)."""
        from ..validate.rules import edition

        return self.manifest._one("SELECT 1 FROM validations WHERE version = ? AND rules IS ?",
                                  (label, edition())) is not None

    def checked_by_other_rules(self, label: str) -> bool:
        """Checked, but by other rules than this release's (an earlier release before an upgrade, or a later one that a
        site rolled back from)."""
        from ..validate.rules import edition

        return self.manifest._one("SELECT 1 FROM validations WHERE version = ? AND rules IS NOT ?",
                                  (label, edition())) is not None

    def rules_of(self, label: str) -> str | None:
        """The rules that checked the version, as recorded (validations.rules; None: not recorded or not checked)."""
        row = self.manifest._one("SELECT rules FROM validations WHERE version = ?", (label,))
        return row[0] if row else None

    def checked(self, label: str) -> tuple[pl.DataFrame, list[str | None]]:
        """(the version's findings, the rules of each check of it recorded) read in one transaction: as separate
        reads, a `validate` committing between them paired the findings before it with the state after it (an
        unchecked version shown as a clean one)."""
        if not self.manifest.path.exists():
            return pl.DataFrame(schema=FINDINGS_SCHEMA), []
        with self.manifest._open() as con:
            con.execute("BEGIN")  # one snapshot of the manifest for both reads
            try:
                found = fetched_frame(con.execute("SELECT severity, rule, srcfile, message FROM findings WHERE version = ? "
                                                  "ORDER BY srcfile, rule, message", (label,)), FINDINGS_SCHEMA)
                rules = [r[0] for r in con.execute("SELECT rules FROM validations WHERE version = ?", (label,))]
            finally:
                con.rollback()
        return found, rules

    def overview(self, label: str, previous: str | None, examples: int
                 ) -> tuple[int, pl.DataFrame, list[str | None], list[str | None], dict | None]:
        """(findings of `label`, their counts by severity and rule with each group's first `examples` (path, message)
        in `findings`' order, the rules of each check of `label`, those of `previous`, and what `label` fixed, brought
        and kept of `previous`'s findings as report.summary.findings_compared says it), counted in SQLite in one
        transaction: the report read both versions' findings into frames (500k each: ~0.6 GB, 10 s of CPU)."""
        groups_schema = {"severity": pl.String, "rule": pl.String, "n": pl.Int64,
                         "ex": pl.List(pl.String), "msg": pl.List(pl.String)}
        if not self.manifest.path.exists():
            return 0, pl.DataFrame(schema=groups_schema), [], [], None
        with self.manifest._open() as con:
            con.execute("BEGIN")  # one snapshot of the manifest for every read
            try:
                # (the findings first: the transaction's snapshot is taken by its first read, as in `checked`)
                # each group's count and first paths (in `findings`' order: by path, then message)
                counts = con.execute(
                    """SELECT severity, rule, count(*) AS n FROM findings WHERE version = ? GROUP BY 1, 2""",
                    (label,)).fetchall()
                firsts = con.execute(
                    """SELECT severity, rule, srcfile, message FROM (
                           SELECT severity, rule, srcfile, message,
                                  row_number() OVER (PARTITION BY severity, rule ORDER BY srcfile, message) AS k
                           FROM findings WHERE version = ?) WHERE k <= ? ORDER BY severity, rule, k""",
                    (label, examples)).fetchall()
                rules = [r[0] for r in con.execute("SELECT rules FROM validations WHERE version = ?", (label,))]
                before: list = []
                since = None
                if previous is not None:
                    before = [r[0] for r in con.execute("SELECT rules FROM validations WHERE version = ?", (previous,))]
                    # a finding is its severity, rule and file (findings_compared); in the previous version, this one
                    # or both, counted by severity
                    rows = con.execute(
                        """SELECT severity, sum(was AND NOT now), sum(now AND NOT was), sum(was AND now) FROM (
                               SELECT severity, max(version = :before) AS was, max(version = :now) AS now
                               FROM findings WHERE version IN (:before, :now) GROUP BY severity, rule, srcfile)
                           GROUP BY severity""", {"before": previous, "now": label}).fetchall()
                    since = {"since": previous}
                    for i, part in enumerate(("fixed", "new", "still_open"), start=1):
                        by = {k: 0 for k in ("error", "warning", "info")}
                        by.update({row[0]: row[i] for row in rows if row[i]})
                        since[part] = {"total": sum(row[i] or 0 for row in rows), **by}
            finally:
                con.rollback()
        ex: dict[tuple, list] = {}
        for severity, rule, srcfile, message in firsts:
            ex.setdefault((severity, rule), []).append((srcfile, message))
        groups = pl.DataFrame([(s, r, n, [p for p, _m in ex[s, r]], [m for _p, m in ex[s, r]]) for s, r, n in counts],
                              schema=groups_schema, orient="row")
        total = sum(n for _s, _r, n in counts)
        return total, groups, rules, before, since

    def findings(self, label: str) -> pl.DataFrame:
        if not self.manifest.path.exists():
            return pl.DataFrame(schema=FINDINGS_SCHEMA)
        with self.manifest._open() as con:  # few rows: plain sqlite3, no ADBC start-up on a no-change run
            return fetched_frame(con.execute(
                "SELECT severity, rule, srcfile, message FROM findings WHERE version = ? ORDER BY srcfile, rule, message",
                (label,)), FINDINGS_SCHEMA)

    def current_files(self, *, with_file_id: bool = False) -> pl.DataFrame:
        """The current files with the columns the rules read (and their file_id: a dry run leaves out the
        ones it would replace)."""
        schema = {"file_id": pl.Int64, **VALIDATION_SCHEMA} if with_file_id else VALIDATION_SCHEMA
        return self.manifest.query_frame(
            f"SELECT {', '.join(schema)} FROM source_files WHERE time_invalid IS NULL", schema=schema)

    def known_facts(self, wanted: pl.DataFrame) -> pl.DataFrame:
        """Cached facts for the (kind, md5) pairs in `wanted`."""
        return self._known(wanted, FACTS_SCHEMA)

    def known_keys(self, wanted: pl.DataFrame) -> pl.DataFrame:
        """The (kind, md5) pairs of `wanted` that have cached facts, without the facts (a million: ~25 MB, not ~200)."""
        keys = {"kind": FACTS_SCHEMA["kind"], "md5": FACTS_SCHEMA["md5"]}
        pairs = wanted.select("kind", "md5").unique()
        # Most of the cache wanted (a version's check): all its keys, in one pass, beat as many lookups
        # (640k cached, 620k wanted: 0.51-0.57 s against 1.29-1.59 s), at any size
        if pairs.height * _LOOKUP_RATIO < self.manifest._one("SELECT count(*) FROM file_facts")[0]:
            return self._known(pairs, keys)
        cached = self.manifest.query_frame("SELECT kind, md5 FROM file_facts", schema=keys)
        return pairs.join(cached, on=["kind", "md5"], how="semi")

    def _known(self, wanted: pl.DataFrame, schema: dict) -> pl.DataFrame:
        if wanted.height == 0:
            return pl.DataFrame(schema=schema)
        from .manifest import read_frame

        with self.manifest.adbc() as con, con.cursor() as cur:
            # In key order: each lookup then finds its page where the last one was (1M files' facts: 3.0 s in
            # random order, 0.5 s in key order; sqlite3, page cache warm)
            wanted = wanted.select("kind", "md5").unique().sort("kind", "md5")
            cur.adbc_ingest("_want", wanted.to_arrow(), mode="create", temporary=True)
            frame = read_frame(cur, f"SELECT {', '.join('f.' + c for c in schema)} FROM temp._want w "
                                    "JOIN file_facts f ON f.kind = w.kind AND f.md5 = w.md5")
        return frame.cast(schema) if frame.height else pl.DataFrame(schema=schema)  # type: ignore[arg-type]

    def save_facts(self, new_facts: pl.DataFrame, *, replace: bool = True, read_back: bool = True) -> pl.DataFrame | None:
        """Header facts read outside a check (e.g. by the registries, or while hashing), cached by content;
        `replace=False` keeps facts already cached for the same content as they are. Returns the facts the
        cache now holds for the contents of `new_facts` (FACTS_SCHEMA, one row per content), read back only
        where the cache kept its own; with read_back=False, nothing."""
        if new_facts.height == 0:
            return pl.DataFrame(schema=FACTS_SCHEMA) if read_back else None
        cached = pl.DataFrame(schema=FACTS_SCHEMA)
        from .manifest import _arrow_stream, read_frame

        ordered = _in_key_order(new_facts)  # at most one copy of the facts (1M files: ~180 MB of JSON)
        with self.manifest.adbc() as con:
            with con.cursor() as cur:
                # (converted to Arrow slice by slice: all at once, a copy of every string)
                cur.adbc_ingest("_facts", _arrow_stream(ordered), mode="create", temporary=True)
                if not replace and read_back:
                    found = read_frame(cur, "SELECT f.kind, f.md5, f.facts FROM file_facts f JOIN temp._facts t "
                                            "ON t.kind = f.kind AND t.md5 = f.md5")
                    if found.height:
                        cached = found.cast(FACTS_SCHEMA).unique(["kind", "md5"])  # type: ignore[arg-type]
                cur.execute(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO file_facts "
                            "SELECT kind, md5, facts FROM temp._facts")
            con.commit()
        self.manifest.after_commit()
        if not read_back:
            return None
        if ordered.select(pl.struct("kind", "md5").is_duplicated().any()).item():  # a content at several paths
            ordered = ordered.unique(["kind", "md5"], keep="first", maintain_order=True)
        return pl.concat([ordered.join(cached, on=["kind", "md5"], how="anti"), cached]) if cached.height else ordered

    def save(self, label: str, new_facts: pl.DataFrame, findings: pl.DataFrame, *, complete: bool = True) -> None:
        """One transaction: the facts read this time, and the version's findings (replacing any earlier ones).
        An incomplete check (some files could not be read) is stored but not marked as done."""
        from ..faults import pause
        from ..validate.rules import KINDS, edition
        from .manifest import _arrow_stream

        counts = dict(findings.group_by("severity").len().iter_rows()) if findings.height else {}
        stamp = iso(utc_now())
        try:
            with self.manifest.adbc() as con:
                with con.cursor() as cur:
                    _forget_other_kinds(cur, KINDS)
                    if new_facts.height:
                        cur.adbc_ingest("_facts", _arrow_stream(_in_key_order(new_facts)), mode="create", temporary=True)
                        cur.execute("INSERT OR REPLACE INTO file_facts SELECT kind, md5, facts FROM temp._facts")
                    # (an import's findings about the journal it read are not the check's: they stay)
                    cur.execute("DELETE FROM findings WHERE version = ? AND rule NOT LIKE 'import.%'", (label,))
                    if findings.height:
                        cur.adbc_ingest("findings", _arrow_stream(findings.select(
                            pl.lit(label).alias("version"), "severity", "rule", "srcfile", "message")), mode="append")
                    pause("validate")
                    cur.execute("DELETE FROM validations WHERE version = ?", (label,))
                    if complete:
                        cur.execute(
                            "INSERT INTO validations (version, validated_at, n_error, n_warning, n_info, headers_read, "
                            "rules) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (label, stamp, counts.get("error", 0), counts.get("warning", 0), counts.get("info", 0),
                             new_facts.height, edition()),
                        )
                con.commit()
                pause("validated")  # (tests: a signal raised once the commit returned, as one during it is)
        except BaseException as exc:
            # SQLite commits in C and Python's handler runs after it returns: a signal that came while the commit
            # wrote is raised once the findings are recorded ("no findings of this check were recorded" was said)
            if not isinstance(exc, Exception) and complete and self._recorded(label, stamp):
                exc.validated = label  # type: ignore[attr-defined]
            raise
        self.manifest.after_commit()

    def _recorded(self, label: str, stamp: str) -> bool:
        """The check of `label` stamped `stamp` is in the manifest (its transaction was committed)."""
        import sqlite3

        from ..errors import ManifestError

        try:
            with self.manifest._open() as con:
                return con.execute("SELECT 1 FROM validations WHERE version = ? AND validated_at = ?",
                                   (label, stamp)).fetchone() is not None
        except (ManifestError, sqlite3.Error):
            return False


def _forget_other_kinds(cur, kinds: tuple[str, ...]) -> None:
    """Facts cached under a kind this release does not read (its reader changed: dicom.v5 became dicom.v6) are never
    read again, and the DICOM kinds before dicom.v6 kept the identifying attributes as written (PatientName,
    PatientBirthDate, addresses): deleted, once per set of kinds (meta.fact_kinds), their pages zeroed (secure_delete),
    not left readable in the file's free pages. A release rolled back to reads its own kinds again."""
    said = ",".join(kinds)
    cur.execute("SELECT value FROM meta WHERE key = 'fact_kinds'")
    row = cur.fetchone()
    if row is not None and row[0] == said:
        return
    cur.execute("PRAGMA secure_delete = ON")
    cur.execute(f"DELETE FROM file_facts WHERE kind NOT IN ({', '.join('?' * len(kinds))})", kinds)
    cur.execute("INSERT OR REPLACE INTO meta VALUES ('fact_kinds', ?)", (said,))


def _in_key_order(facts: pl.DataFrame) -> pl.DataFrame:
    """FACTS rows in file_facts' key order: INSERT ... SELECT then fills the (kind, md5) index in order instead
    of at random MD5s (620k facts of a 1M-file first run, then kept in a table keyed by them: 16.5 s -> 5.9 s).
    Facts already in that order (a scan's) are not copied."""
    facts = facts.select(list(FACTS_SCHEMA))
    kind, md5 = pl.col("kind"), pl.col("md5")
    in_order = (kind > kind.shift()) | ((kind == kind.shift()) & (md5 >= md5.shift()))
    return facts if facts.select(in_order.fill_null(True).all()).item() else facts.sort("kind", "md5")
