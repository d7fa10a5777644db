"""The manifest's schema: a new manifest is created from the column registry
(frames.MANIFEST_TABLES); an older one is brought up by numbered migrations.

A manifest is years of a site's history, so a schema change is never a rebuild. Each
migration may add tables, columns and indexes and backfill them; an upgrade runs its steps
and bumps `meta.schema_version` in one transaction: an upgrade that fails (or is killed)
leaves the manifest as it was. Migrations use their own, frozen DDL (not the
registry, which describes the latest schema); tests/test_migrations.py checks that a
migrated manifest has the same tables, columns and indexes as a new one.

To add a column: add it at the end of its table in frames.MANIFEST_TABLES, bump
SCHEMA_VERSION, and add a MIGRATIONS step with the ALTER TABLE (and any backfill).
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from collections.abc import Callable

from ..errors import ManifestError, ManifestLocked
from ..faults import pause
from ..frames import MANIFEST_TABLES, TABLE_SUFFIX

SCHEMA_VERSION = 11
# The oldest release that may write a manifest of this schema (meta.min_release). A release that classifies or checks
# a manifest otherwise raises it (a step that sets the new value, no other change): an older release run on it would
# classify its rows back and check its versions by rules that leave findings out, with no word (schema 9's releases
# did so to each other), so it refuses it, and says which release to install.
MIN_RELEASE = "0.2.0"

INDEXES = (
    # header facts: one row per content and kind (schema 11; before, the table's own key)
    "CREATE UNIQUE INDEX IF NOT EXISTS file_facts_key ON file_facts(kind, md5)",
    "CREATE INDEX IF NOT EXISTS findings_version ON findings(version)",
    "CREATE INDEX IF NOT EXISTS changes_version ON changes(version)",
    "CREATE INDEX IF NOT EXISTS scan_errors_version ON scan_errors(version)",
    "CREATE INDEX IF NOT EXISTS registry_person ON registry(person_id)",
    "CREATE INDEX IF NOT EXISTS run_errors_run ON run_errors(run_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS registry_proc ON registry(proc_id) WHERE proc_id IS NOT NULL",
)
# Indexes on source_files are dropped around the first (bulk) load and rebuilt after it.
SOURCE_FILES_INDEXES = (
    # At most one current row per path: the manifest's central invariant, enforced.
    "CREATE UNIQUE INDEX IF NOT EXISTS source_files_current ON source_files(srcfile) WHERE time_invalid IS NULL",
    "CREATE INDEX IF NOT EXISTS source_files_path ON source_files(srcfile)",
    "CREATE INDEX IF NOT EXISTS source_files_record ON source_files(record_id)",
)


def index_name(ddl: str) -> str:
    return ddl.split(" ON ")[0].split()[-1]


def missing_indexes(con: sqlite3.Connection) -> list[str]:
    """The schema's indexes the manifest lacks (one dropped by hand, `DROP INDEX ...` in sqlite3): every query that
    needs one walks its whole table, so runs grew slow with no word."""
    have = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    return [index_name(ddl) for ddl in (*INDEXES, *SOURCE_FILES_INDEXES) if index_name(ddl) not in have]


def restore_indexes(con: sqlite3.Connection, where: str) -> list[str]:
    """Create again the schema's indexes the manifest lacks, in one transaction, saying so; their names."""
    lacking = missing_indexes(con)
    if not lacking:
        return []
    from ..progress import log

    log.warning(f"the manifest {where} lacks its {'index' if len(lacking) == 1 else 'indexes'} {', '.join(lacking)} "
                "(dropped by hand?): creating again (a query without one reads a whole table)")
    try:
        with con:
            con.execute("BEGIN IMMEDIATE")
            for ddl in (*INDEXES, *SOURCE_FILES_INDEXES):
                if index_name(ddl) in lacking:
                    con.execute(ddl)
    except sqlite3.IntegrityError as exc:  # a unique index whose rows were made duplicate while it was gone
        raise _refused(ManifestError(
            f"the manifest lacks its index {', '.join(lacking)} and it cannot be created again: its rows break it "
            f"({exc}); they were edited while it was gone; nothing was changed", where=where,
            fix="restore the manifest from a backup, or ask the chorus-batch maintainers how to repair it")) from None
    return lacking


def create_table_sql(table: str) -> str:
    columns = ",\n    ".join(f"{c.name} {c.sql}" for c in MANIFEST_TABLES[table])
    return f"CREATE TABLE {table} (\n    {columns}" + TABLE_SUFFIX.get(table, ")")


def _create_latest(con: sqlite3.Connection) -> None:
    for table in MANIFEST_TABLES:
        con.execute(create_table_sql(table))
    for ddl in (*INDEXES, *SOURCE_FILES_INDEXES):
        con.execute(ddl)
    con.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("schema_version", str(SCHEMA_VERSION)), ("manifest_id", uuid.uuid4().hex), ("state_generation", "0"),
        ("min_release", MIN_RELEASE)])


# ----------------------------------------------------------------------------- migrations

def _to_2(con: sqlite3.Connection) -> None:
    """Validation: header facts by content, findings and validations per version."""
    for ddl in (
        "CREATE TABLE IF NOT EXISTS file_facts (kind TEXT NOT NULL, md5 TEXT NOT NULL, facts TEXT NOT NULL, "
        "PRIMARY KEY (kind, md5)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS findings (version TEXT NOT NULL, severity TEXT NOT NULL, rule TEXT NOT NULL, "
        "srcfile TEXT, message TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS validations (version TEXT PRIMARY KEY, validated_at TEXT NOT NULL, "
        "n_error INTEGER NOT NULL, n_warning INTEGER NOT NULL, n_info INTEGER NOT NULL, headers_read INTEGER NOT NULL)",
    ):
        con.execute(ddl)


def _to_3(con: sqlite3.Connection) -> None:
    """Roots: where the site's files are, so validate/report/upload can reopen the site without --site.
    Files committed before keep root_id NULL (their root was not recorded); the site root of the last
    finished run is recorded when it was an absolute path or a URL."""
    con.execute("CREATE TABLE roots (root_id INTEGER PRIMARY KEY, location TEXT NOT NULL, modality TEXT, "
                "first_version TEXT)")
    con.execute("ALTER TABLE source_files ADD COLUMN root_id INTEGER")
    row = con.execute("SELECT site, version FROM runs WHERE exit_code IN (0, 1) AND site IS NOT NULL "
                      "ORDER BY run_id DESC LIMIT 1").fetchone()
    if row is not None and (os.path.isabs(row[0]) or "://" in row[0]):
        first = con.execute("SELECT min(label) FROM versions").fetchone()[0]
        con.execute("INSERT INTO roots (location, modality, first_version) VALUES (?, NULL, ?)",
                    (row[0].replace(os.sep, "/") if "://" not in row[0] else row[0], first))


def _to_4(con: sqlite3.Connection) -> None:
    """Today's procedures: the waveform category / DICOM modality and the layout of each file, the
    category and the (once allocated, never changed) procedure id of each record. Header facts read
    under the older DICOM and visit readers are dropped: the current readers keep more of each file,
    so those files are read once more."""
    for ddl in (
        "ALTER TABLE source_files ADD COLUMN category TEXT",
        "ALTER TABLE source_files ADD COLUMN layout TEXT",
        "ALTER TABLE registry ADD COLUMN category TEXT",
        "ALTER TABLE registry ADD COLUMN proc_id INTEGER",
        "DELETE FROM file_facts WHERE kind IN ('dicom', 'omop_visits')",
    ):
        con.execute(ddl)


def _to_5(con: sqlite3.Connection) -> None:
    """A run that changes no file commits no version, even when what it could not read changed: its
    problems are kept per run."""
    con.execute("CREATE TABLE run_errors (run_id INTEGER NOT NULL, srcfile TEXT, kind TEXT NOT NULL, message TEXT NOT NULL)")


def _to_6(con: sqlite3.Connection) -> None:
    """Rolling re-verification: when each file version's bytes were last read and matched its MD5. Rows
    committed before are treated as the oldest: they are re-verified first."""
    con.execute("ALTER TABLE source_files ADD COLUMN verified_ns INTEGER")


# The column as this project declared it, or as a database browser declares a table it rebuilt to add a column or
# index of the site's own (DB Browser for SQLite quotes every name and separates with tabs: '"md5"\tTEXT\tNOT NULL'):
# the unquoted pattern found no column there, and every upgrade failed with 'SQLite failed on the manifest ... report it'
_MD5_NOT_NULL = re.compile(r"""([(,]\s*)(["`\[]?)md5(["`\]]?)\s+TEXT\s+NOT\s+NULL\b""", re.IGNORECASE)


def _to_7(con: sqlite3.Connection) -> None:
    """Cloud sources: how each MD5 was obtained (md5_source), the storage's etag, and a NULL MD5 for a
    cloud file that could not be verified. Dropping NOT NULL from source_files.md5 is a change of the
    table's declared SQL only (SQLite's documented writable_schema procedure for removing a NOT NULL
    constraint: no row is rewritten, so it takes the same time on 10M rows as on 10). Rows of local roots
    committed before were all read and hashed: their md5_source is 'computed'; others are not known."""
    (sql,) = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'source_files'").fetchone()
    relaxed, n = _MD5_NOT_NULL.subn(r"\1\2md5\3 TEXT", sql)
    md5_not_null = [row[3] for row in con.execute("PRAGMA table_info(source_files)") if row[1] == "md5"]
    if md5_not_null != [0] and n != 1:
        raise sqlite3.DatabaseError(f"source_files has no single 'md5 TEXT NOT NULL' column to relax ({n} found)")
    if n == 1:
        (cookie,) = con.execute("PRAGMA schema_version").fetchone()
        con.execute("PRAGMA writable_schema = ON")
        try:
            con.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'source_files'", (relaxed,))
            con.execute(f"PRAGMA schema_version = {int(cookie) + 1}")
        finally:
            con.execute("PRAGMA writable_schema = OFF")
    con.execute("ALTER TABLE source_files ADD COLUMN md5_source TEXT")
    con.execute("ALTER TABLE source_files ADD COLUMN etag TEXT")
    con.execute("UPDATE source_files SET md5_source = 'computed' WHERE root_id IN "
                "(SELECT root_id FROM roots WHERE location NOT LIKE '%://%')")


def _to_8(con: sqlite3.Connection) -> None:
    """Submission to the central container: the uploads ledger (one row per file version and destination)
    and the submissions (one per version and destination); and the release that wrote each run and
    version (NULL for those written before: the release was not recorded)."""
    for ddl in (
        "CREATE TABLE uploads (central TEXT NOT NULL, version TEXT NOT NULL, file_id INTEGER NOT NULL, "
        "destination TEXT NOT NULL, state TEXT NOT NULL, uploaded_at TEXT, bytes INTEGER, md5 TEXT, etag TEXT, "
        "confirmed_by TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, verified_at TEXT, "
        "verify_state TEXT, verify_method TEXT, PRIMARY KEY (central, version, file_id)) WITHOUT ROWID",
        "CREATE TABLE submissions (central TEXT NOT NULL, version TEXT NOT NULL, started_at TEXT, finished_at TEXT, "
        "verified_at TEXT, verify_method TEXT, n_bad INTEGER, manifest_copied_at TEXT, "
        "PRIMARY KEY (central, version)) WITHOUT ROWID",
        "ALTER TABLE runs ADD COLUMN release TEXT",
        "ALTER TABLE versions ADD COLUMN release TEXT",
    ):
        con.execute(ddl)


def _to_9(con: sqlite3.Connection) -> None:
    """Which rules checked each version (validate.rules.edition). The versions checked before are NULL: by an
    earlier release's rules, so the next run or `validate` checks the latest again with today's (from the cached
    facts: no header is read again) rather than showing findings that leave out the rules added since."""
    con.execute("ALTER TABLE validations ADD COLUMN rules TEXT")


def _to_10(con: sqlite3.Connection) -> None:
    """The oldest release that may write the manifest (MIN_RELEASE). Releases of schema 9 refuse it (a newer schema):
    each classified the current rows and checked the latest version by its own rules, undoing a later release's
    without a word when a site rolled back."""
    con.execute("DELETE FROM meta WHERE key = 'min_release'")
    con.execute("INSERT INTO meta VALUES ('min_release', ?)", (MIN_RELEASE,))


def _to_11(con: sqlite3.Connection) -> None:
    """Header facts in a rowid table, keyed by a unique index on (kind, md5), instead of a WITHOUT ROWID table
    keyed by them. A run caches the facts it parses while hashing piece by piece (hashing.FACTS_HANDED_EVERY):
    keyed by MD5, each piece landed all through the table, rewriting most of its pages, so a first run's caching
    grew with the square of the files (1M files: 29.6 s); now rows are appended and only the small index is
    written at random. The facts are copied as they are: none is read again."""
    con.execute("CREATE TABLE file_facts_11 (kind TEXT NOT NULL, md5 TEXT NOT NULL, facts TEXT NOT NULL)")
    con.execute("INSERT INTO file_facts_11 (kind, md5, facts) SELECT kind, md5, facts FROM file_facts")
    con.execute("DROP TABLE file_facts")
    # A site's own view or trigger that reads file_facts (sqlite3 `CREATE VIEW ...`, harmless to every release) names
    # no table between the DROP and the RENAME, and SQLite's RENAME checks the whole schema: it failed with "error in
    # view ...: no such table", called the manifest damaged and sent the site to a backup that has the same view. The
    # legacy RENAME leaves views and triggers as they are: they name file_facts, the table they read again after it.
    (legacy,) = con.execute("PRAGMA legacy_alter_table").fetchone()
    con.execute("PRAGMA legacy_alter_table = ON")
    try:
        con.execute("ALTER TABLE file_facts_11 RENAME TO file_facts")
    finally:
        con.execute(f"PRAGMA legacy_alter_table = {int(legacy)}")
    con.execute("CREATE UNIQUE INDEX file_facts_key ON file_facts(kind, md5)")


# schema version reached -> the step that reaches it from the one before
MIGRATIONS = {2: _to_2, 3: _to_3, 4: _to_4, 5: _to_5, 6: _to_6, 7: _to_7, 8: _to_8, 9: _to_9, 10: _to_10,
              11: _to_11}
assert max(MIGRATIONS) == SCHEMA_VERSION


# What stands after a manifest is refused for what it holds (a newer schema, a damaged schema version, a later
# release's mark): the command's own word on a failure ("run the same command again", registry's "the proc_ids given
# so far stay recorded") was said of a refusal that no rerun of this release ends, and of proc_ids never given.
LEFT_AS_IT_WAS = "nothing was written to it: the manifest is as it was"
# What to do with a --db that is another program's database, or no SQLite database at all, where the command (`run`)
# would start a new manifest in a new file; a command that only reads says READ_ONLY_WRONG_FILE_FIX instead
NOT_A_MANIFEST_FIX = "pass --db with the manifest's path, or a new file name to start one"
NOT_SQLITE_FIX = "pass --db with the right file, or move this one aside to start a new manifest"
READ_ONLY_WRONG_FILE_FIX = ("give the manifest file `chorus-batch run` writes (its --db), or its --parquet folder; this "
                            "command only reads, and starts no new manifest")


def _refused(exc: ManifestError) -> ManifestError:
    exc.outcome = LEFT_AS_IT_WAS  # type: ignore[attr-defined]
    return exc


def schema_version(con: sqlite3.Connection, where: str) -> int | None:
    """The manifest's schema version; None for an empty (new) database file. Anything else that is not a
    manifest with a schema version this project wrote is refused: an upgrade must never start on it."""
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and not con.execute("SELECT 1 FROM sqlite_master").fetchone():
        return None
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() if "meta" in tables else None
    except sqlite3.OperationalError:  # a meta table of another shape: another program's
        row = None
    if row is None and not {"meta", "source_files", "versions"} <= tables:
        other = ManifestError("this SQLite database is not a chorus-batch manifest (it has no meta.schema_version); "
                              "nothing was changed", where=where,
                              fix=NOT_A_MANIFEST_FIX)
        # (as for a file that is no SQLite database: "the manifest holds what it held before" of no manifest is untrue)
        other.outcome = "nothing was written to it: the file is as it was"
        raise other
    if row is None:  # every release wrote it: the row was deleted
        raise _refused(ManifestError(
            "the manifest has no schema version (its meta table lacks the schema_version row): it was edited or "
            "damaged; nothing was changed", where=where,
            fix="restore the manifest from a backup, or ask the chorus-batch maintainers how to repair it"))
    if not re.fullmatch(r"[0-9]+", str(row[0])) or not 1 <= int(row[0]):
        raise _refused(ManifestError(
            f"the manifest's schema version is {row[0]!r}, not one chorus-batch writes (1 to {SCHEMA_VERSION}): "
            "meta.schema_version was edited or damaged; nothing was changed", where=where,
            fix="restore the manifest from a backup, or set meta.schema_version back to the schema of the release "
                "that wrote it"))
    if int(row[0]) == SCHEMA_VERSION:
        _check_tables(con, tables, where)
    return int(row[0])


def _check_tables(con: sqlite3.Connection, tables: set[str], where: str) -> None:
    """A manifest of this schema has every table and column of it. One a hand dropped (a DROP TABLE, a column
    dropped in a database browser) was read as far as it went: `versions` said "SQLite failed on the manifest: no
    such table: uploads" with a query, 'report it', and a run or `validate` went on and exited 0 on it."""
    lacking = []
    for table, columns in MANIFEST_TABLES.items():
        if table not in tables:
            lacking.append(f"table {table}")
            continue
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        lacking += [f"column {table}.{c.name}" for c in columns if c.name not in have]
    if lacking:
        import shlex

        from ..errors import salvage_command

        here = shlex.quote(where)
        raise _refused(ManifestError(
            f"the manifest has schema version {SCHEMA_VERSION} but lacks its {', '.join(lacking)}: it was edited or "
            "damaged; nothing was changed", where=where,
            fix=f"restore it from a backup (in its place: cp BACKUP {here}), or from the copy `upload` left beside the "
                "newest version it completed at the centre (<version>/_manifest/manifest.sqlite); do not start a new "
                "manifest in its place: its versions and uploads ledger would be lost. With neither, keep it and copy "
                f"out what is still there: {salvage_command(where)}"))


def _newer_release(con: sqlite3.Connection) -> str | None:
    """The release that wrote a manifest of a newer schema, as it recorded itself (meta.min_release, the release of
    its latest run), when it is later than this one; None when it recorded none (columns and rows of a schema this
    release does not know are read as far as they go)."""
    from .. import release

    said = []
    for sql in ("SELECT value FROM meta WHERE key = 'min_release'",
                "SELECT release FROM runs WHERE release IS NOT NULL ORDER BY run_id DESC LIMIT 1"):
        try:
            row = con.execute(sql).fetchone()
        except sqlite3.Error:
            continue
        if row is not None and re.match(r"[0-9]+(\.[0-9]+)*", str(row[0])):
            said.append(re.match(r"[0-9]+(\.[0-9]+)*", str(row[0])).group(0))
    later = [r for r in said if _release_key(r) > _release_key(release())]
    return max(later, key=_release_key) if later else None


def too_new(version: int, where: str, con: sqlite3.Connection | None = None) -> ManifestError:
    """A manifest of a newer schema, refused by every command: "upgrade chorus-batch" named no release, and a site
    whose index serves several (a pinned requirement, an internal mirror) could not tell which reads it. con: the
    manifest, to name the release that wrote it."""
    from .. import release

    writer = _newer_release(con) if con is not None else None
    wrote = f"; chorus-batch {writer} wrote it" if writer else ""
    return _refused(ManifestError(
        f"the manifest has schema version {version}, newer than this chorus-batch ({release()}) understands "
        f"({SCHEMA_VERSION}){wrote}: this release neither reads nor writes it", where=where,
        fix=f"upgrade chorus-batch to {writer} or later (pip install -U 'chorus-batch>={writer}')" if writer else
            f"upgrade chorus-batch to the release that wrote it, one later than {release()} (pip install -U chorus-batch)"))


def _release_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"[0-9]+", text)[:3])


def check_release(con: sqlite3.Connection, where: str) -> None:
    """Refuse to write a manifest a later release marked as not to be written by this one (meta.min_release)."""
    from .. import release

    row = con.execute("SELECT value FROM meta WHERE key = 'min_release'").fetchone()
    if row is not None and _release_key(str(row[0])) > _release_key(release()):
        raise _refused(ManifestError(
            f"the manifest was written by chorus-batch {row[0]} or later, which classifies and checks it by rules this "
            f"release ({release()}) does not have: writing it with this one would undo them; nothing was changed",
            where=where, fix=f"install chorus-batch {row[0]} or later (pip install -U chorus-batch); reading it "
                             "(versions, files, diff, history, report) works with this release"))


SAY_COPY_FROM = 100_000  # facts: fewer are copied within a second


def _say_slow_steps(con: sqlite3.Connection, before: int, where: str) -> None:
    """Say, before it starts, a step that copies a table whose size a site cannot guess (an upgrade printed nothing
    for as long as it took): step 11 copies every cached fact, 6.9 s for 650k on the benchmark machine."""
    if before < 11 <= SCHEMA_VERSION:
        from ..progress import log
        from ..units import plural

        if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'file_facts'").fetchone():
            return  # (a manifest older than schema 4 has no facts yet: its step 4 makes the table)
        facts = con.execute("SELECT count(*) FROM file_facts").fetchone()[0]
        if facts >= SAY_COPY_FROM:
            log.info(f"upgrading {where} to schema {SCHEMA_VERSION}: copying its {plural(facts, 'cached header fact', grouped=True)} "
                     f"into a new table (about a second per 100,000); stopped, the manifest stays as it was")


def upgrade(con: sqlite3.Connection, where: str,
            storage_failure: Callable[[BaseException], ManifestError | ManifestLocked] | None = None,
            before_writing: Callable[[], None] | None = None) -> tuple[int | None, int]:
    """Create the schema, or migrate it; returns (version before, version now). A manifest a later release marked
    as not to be written by this one is refused (check_release). storage_failure: what an SQLite error of the
    storage (a full disk or temporary folder, a file that cannot be written) means, as the manifest's own commands
    say it (Manifest.failure). before_writing: called on an existing manifest once it is checked, before anything
    is written to it (Manifest's first counted commit: _start_count)."""
    before = schema_version(con, where)
    if before is None:
        with con:
            _create_latest(con)
        return None, SCHEMA_VERSION
    if before > SCHEMA_VERSION:
        raise too_new(before, where, con)
    if before == SCHEMA_VERSION:
        check_release(con, where)
        if before_writing is not None:
            before_writing()
        restore_indexes(con, where)
        return before, before
    target, index = before, None
    # A page lost by the disk (a copy cut short) is met by a step only if that step reads it: the others wrote the
    # damaged manifest on to this schema, `upgrade` said "upgraded" (exit 0) and the run that upgraded it then failed
    # "damaged ... nothing was written to it". Checked first, once per upgrade (it reads every page): refused unwritten
    problems = [part for (row,) in con.execute("PRAGMA quick_check(3)") for part in str(row).splitlines()
                if not part.startswith("***")]  # ("*** in database main ***": a heading, no problem)
    if problems != ["ok"]:
        bad = sqlite3.DatabaseError(f"database disk image is malformed (PRAGMA quick_check: {'; '.join(problems)})")
        if storage_failure is None:
            raise bad
        said = storage_failure(bad)  # (the manifest's own words on a damaged file: restore, salvage)
        refused = ManifestError(f"upgrading the manifest from schema {before} was refused: {said.what}; it was left "
                                f"unchanged at schema {before}", where=said.where or where, fix=said.fix)
        if hasattr(said, "outcome"):
            refused.outcome = said.outcome  # type: ignore[attr-defined]
        raise refused
    if before_writing is not None:
        before_writing()
    _say_slow_steps(con, before, where)
    try:
        with con:  # one transaction: an upgrade that fails (or is killed) leaves the manifest exactly as it was
            con.execute("BEGIN IMMEDIATE")
            for target in range(before + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target](con)
            for ddl in (*INDEXES, *SOURCE_FILES_INDEXES):
                index = index_name(ddl)
                con.execute(ddl)
            index = None
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            pause("upgrade")  # (tests: a signal in the upgrade's transaction)
        pause("upgraded")  # (tests: a signal raised once the upgrade's commit returned, as one during it is)
    except sqlite3.Error as exc:
        if index is not None and isinstance(exc, sqlite3.IntegrityError):
            # a unique index of the old schema dropped by hand and rows made duplicate meanwhile (two current rows of
            # one path): "failed at the step to schema 11 ... its tables are not those of schema 10" named a step
            # that had succeeded and tables that were right, not the index and the rows
            raise ManifestError(
                f"upgrading the manifest from schema {before} failed creating its index {index} ({exc}): the manifest "
                "lacks it and its rows break it; they were edited while it was gone; it was left unchanged at schema "
                f"{before}", where=where,
                fix="restore the manifest from a backup, or ask the chorus-batch maintainers how to repair it") from None
        # (a transaction SQLite would not begin, another program writing it: "failed at the step to schema 10", named
        # a step of a manifest at schema 10, which none had started)
        failed = f"failed at the step to schema {target}" if target > before else "could not begin"
        text = str(exc).lower()
        damaged = any(w in text for w in ("no such", "duplicate column", "already exists", "constraint"))
        if not damaged and storage_failure is not None:
            # "check the free space of the manifest's folder" sent a site whose $TMPDIR (a node's small tmpfs) filled
            # while step 11 built its index to a disk with gigabytes free: say which folder, as a run does
            said = storage_failure(exc)
            # (another program's lock on it: exit 4, as the run lock says it, not a failure of the upgrade's own)
            raise (ManifestLocked if isinstance(said, ManifestLocked) else ManifestError)(
                f"upgrading the manifest from schema {before} {failed}: {said.what}; it "
                f"was left unchanged at schema {before}", where=said.where or where, fix=said.fix) from None
        raise ManifestError(
            f"upgrading the manifest from schema {before} {failed} ({exc}); it was left "
            f"unchanged at schema {before}", where=where,
            fix=f"its tables are not those of schema {before} (edited or damaged): restore it from a backup, or report "
                "it with this message" if damaged else
                "check the free space and permissions of the manifest's folder, then run again") from None
    except BaseException as exc:  # a signal (KeyboardInterrupt, Stopped)
        # SQLite commits in C and Python's handler runs after it returns: a signal that came while the commit wrote
        # is raised once the upgrade is committed, and "the manifest was not upgraded" was said of an upgraded one
        if not isinstance(exc, Exception) and not con.in_transaction:
            try:
                done = schema_version(con, where) == SCHEMA_VERSION
            except (sqlite3.Error, ManifestError):
                done = False
            if done:
                exc.upgraded = (before, SCHEMA_VERSION)  # type: ignore[attr-defined]
        raise
    return before, SCHEMA_VERSION
