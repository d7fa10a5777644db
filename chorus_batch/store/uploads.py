"""The uploads ledger: which file versions were sent to which central container, and what the centre
confirmed (tables `uploads` and `submissions`, schema 8; their columns are described in frames.py).

What a version submits is its change set: the files it added, replaced or renamed (removed files are
never deleted centrally). Reads are set queries returning frames; writes are batches of rows in one
transaction each, so that an upload killed at any moment loses at most the batch it had not written.
"""

from __future__ import annotations

import hashlib

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence

import polars as pl

from ..errors import ManifestError, UsageError
from ..frames import columns_of
from ..times import iso, utc_now
from .manifest import Manifest

SUBMITTED = ("added", "replaced", "renamed")  # the changes a version sends; removals stay marked in the manifest
CONFIRMED = ("uploaded", "imported")  # the centre holds it: never sent again
# What verify found wrong with a confirmed blob: the next upload sends the file again.
DAMAGED = ("missing", "size", "md5", "content")
# A blob changed at the centre since the ledger recorded it (its etag changed), size and Content-MD5 as recorded, its bytes
# not read back (an earlier release's listing check; now the listing reads such blobs: bytes as sent verified, others
# 'content')
REWRITTEN = "rewritten"
REWRITTEN_FIX = ("`chorus-batch verify --download` (same --db and --to), signed in with read permission, reads back the "
                 "blobs changed at the centre since they were uploaded: those whose bytes are right count as verified "
                 "again, and the next `chorus-batch upload` sends the others again")
# Not sent, and never will be from this tree: its bytes were replaced or removed before it was sent.
FINAL_NOT_SENT = ("superseded",)

# What to do about a file in conflict (the centre holds other content under its name): running again does not mend it
CONFLICT_FIX = ("another manifest (or tool) put a version with this label there: give this site's manifest its own "
                 "place (--to az://<container>/<prefix>/), or have the blob there removed if it is wrong, and upload "
                 "again")


# A run writes the manifest beside an upload; its commit holds SQLite's write lock for the whole transaction
# (minutes for a large site), longer than one connection's busy timeout: ledger writes wait this long for it
# (CHORUS_BATCH_BUSY_WAIT_S: longer for a site whose commits take longer, 0 to fail at once under cron).
BUSY_WAIT_S = 900.0
ENV_BUSY_WAIT = "CHORUS_BATCH_BUSY_WAIT_S"
_TRY_S = 30.0  # one connection's busy timeout (Manifest.connect)
# The first try waits only this long: a lock held longer is a commit under way, said at once ("waiting for it to
# finish"), not after 30 s of silence.
_FIRST_TRY_S = 1.0


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def busy_wait_s() -> float:
    """Seconds a ledger write waits for another writer of the manifest: CHORUS_BATCH_BUSY_WAIT_S, else BUSY_WAIT_S
    (checked when the command starts: config_file.check_environment)."""
    try:
        return max(0.0, float(os.environ.get(ENV_BUSY_WAIT, "").strip() or BUSY_WAIT_S))
    except ValueError:
        return BUSY_WAIT_S

log = logging.getLogger("chorus_batch")

PLAN_SCHEMA = {
    "version": pl.String, "file_id": pl.Int64, "srcfile": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64,
    "md5": pl.String, "root_id": pl.Int64, "modality": pl.String, "superseded": pl.Boolean, "state": pl.String,
    "attempts": pl.Int64, "damaged": pl.Boolean, "replace_etag": pl.String,
    "source_etag": pl.String,  # a cloud file's etag as its version recorded it (NULL: a local file)
}


def _in(values: Sequence[str]) -> str:
    return ", ".join("?" * len(values))


class UploadLedger:
    """The ledger of one manifest for one central container (`central`: its URL, no secrets)."""

    def __init__(self, manifest: Manifest, central: str):
        self.manifest = manifest
        self.central = central

    # ------------------------------------------------------------------ reads

    def versions_not_finished(self) -> list[str]:
        """Versions whose submission to this container is not complete (or that verify found damaged), oldest first."""
        frame = self.manifest.query_frame(
            "SELECT v.label FROM versions v LEFT JOIN submissions s ON s.central = ? AND s.version = v.label "
            "WHERE s.finished_at IS NULL OR EXISTS (SELECT 1 FROM uploads u WHERE u.central = s.central AND "
            f"u.version = v.label AND u.state IN ({_in(CONFIRMED)}) AND u.verify_state IN ({_in(DAMAGED)})) "
            "ORDER BY v.label",
            (self.central, *CONFIRMED, *DAMAGED), schema={"label": pl.String})
        return frame["label"].to_list()

    def plan(self, version: str, modalities: Sequence[str] | None = None) -> pl.DataFrame:
        """The files `version` submits (optionally of some modalities), with their ledger state (NULL: never tried);
        damaged: confirmed, but verify found the blob missing or different (replace_etag: the blob it saw)."""
        where, params = "", [*DAMAGED, *DAMAGED, self.central, version, *SUBMITTED]
        if modalities:
            where = f" AND f.modality IN ({_in(modalities)})"
            params += list(modalities)
        return self.manifest.query_frame(
            "SELECT c.version, f.file_id, f.srcfile, f.size, f.mtime_ns, f.md5, f.root_id, f.modality, "
            "f.version_invalid IS NOT NULL AS superseded, u.state, coalesce(u.attempts, 0) AS attempts, "
            f"coalesce(u.verify_state IN ({_in(DAMAGED)}), 0) AS damaged, "
            f"CASE WHEN u.verify_state IN ({_in(DAMAGED)}) THEN u.etag END AS replace_etag, f.etag AS source_etag FROM changes c JOIN source_files f ON f.file_id = c.file_id "
            "LEFT JOIN uploads u ON u.central = ? AND u.version = c.version AND u.file_id = c.file_id "
            f"WHERE c.version = ? AND c.change IN ({_in(SUBMITTED)}){where} ORDER BY f.srcfile",
            tuple(params), schema=PLAN_SCHEMA)

    def version_fingerprint(self, version: str) -> str | None:
        """Which commit of `version` this is (its label, start, end, mode and site, set once when it was committed): the
        same in every copy of the manifest made after it, another in a copy that committed its own version under
        the label. Kept at the centre with the manifest's id (central.VERSION_OWNER)."""
        row = self.manifest.query_frame(
            "SELECT label, started_at, finished_at, mode, site FROM versions WHERE label = ?", (version,),
            schema={"label": pl.String, "started_at": pl.String, "finished_at": pl.String, "mode": pl.String,
                    "site": pl.String})
        if row.height == 0:
            return None
        return hashlib.sha256("\x1f".join(str(v) for v in row.row(0)).encode()).hexdigest()[:32]

    def confirmed(self, version: str) -> pl.DataFrame:
        """The file versions the ledger says this container holds for `version`, with the manifest's size and MD5, and
        read_etag: the etag of the blob whose bytes the last `verify --download` read back and found right (else null);
        recorded_etag: the blob's etag as the ledger holds it (as sent or found, or as verify last read it back)."""
        return self.manifest.query_frame(
            "SELECT u.file_id, f.srcfile, f.size, f.md5, u.md5 AS confirmed_md5, u.state, "
            "CASE WHEN u.verify_state = 'ok' AND u.verify_method = 'download' THEN u.etag END AS read_etag, "
            "u.etag AS recorded_etag FROM uploads u JOIN source_files f ON f.file_id = u.file_id "
            f"WHERE u.central = ? AND u.version = ? AND u.state IN ({_in(CONFIRMED)}) ORDER BY f.srcfile",
            (self.central, version, *CONFIRMED),
            schema={"file_id": pl.Int64, "srcfile": pl.String, "size": pl.Int64, "md5": pl.String,
                    "confirmed_md5": pl.String, "state": pl.String, "read_etag": pl.String,
                    "recorded_etag": pl.String})

    def versions_uploaded(self) -> list[str]:
        """Versions with at least one file version confirmed at this container, oldest first."""
        frame = self.manifest.query_frame(
            f"SELECT DISTINCT version FROM uploads WHERE central = ? AND state IN ({_in(CONFIRMED)}) ORDER BY version",
            (self.central, *CONFIRMED), schema={"version": pl.String})
        return frame["version"].to_list()

    def versions_in_conflict(self) -> list[str]:
        """Versions with a file recorded as in conflict at this container (the centre holds other content under its
        name), oldest first: there is something to say of them even when none of their files was uploaded."""
        frame = self.manifest.query_frame(
            "SELECT DISTINCT version FROM uploads WHERE central = ? AND state = 'conflict' ORDER BY version",
            (self.central,), schema={"version": pl.String})
        return frame["version"].to_list()

    def conflicts(self, version: str) -> pl.DataFrame:
        """srcfile and message (the blob named, and what to do) of each file of `version` in conflict here."""
        return self.manifest.query_frame(
            "SELECT f.srcfile, u.last_error AS message FROM uploads u JOIN source_files f ON f.file_id = u.file_id "
            "WHERE u.central = ? AND u.version = ? AND u.state = 'conflict' ORDER BY f.srcfile",
            (self.central, version), schema={"srcfile": pl.String, "message": pl.String})

    def n_confirmed(self) -> tuple[int, int]:
        """(file versions, versions) the ledger holds as confirmed at this container."""
        frame = self.manifest.query_frame(
            f"SELECT count(*) AS n, count(DISTINCT version) AS v FROM uploads WHERE central = ? AND state IN ({_in(CONFIRMED)})",
            (self.central, *CONFIRMED), schema={"n": pl.Int64, "v": pl.Int64})
        return int(frame["n"][0]), int(frame["v"][0])

    def versions_copied(self) -> list[str]:
        """Versions whose manifest copy upload put next to them at this container."""
        frame = self.manifest.query_frame(
            "SELECT version FROM submissions WHERE central = ? AND manifest_copied_at IS NOT NULL ORDER BY version",
            (self.central,), schema={"version": pl.String})
        return frame["version"].to_list()

    def other_centrals(self) -> list[str]:
        """The other central containers this manifest has files confirmed at (a mistyped --to names none of its own)."""
        frame = self.manifest.query_frame(
            f"SELECT DISTINCT central FROM uploads WHERE central != ? AND state IN ({_in(CONFIRMED)}) ORDER BY central",
            (self.central, *CONFIRMED), schema={"central": pl.String})
        return frame["central"].to_list()

    # ------------------------------------------------------------------ writes

    def _write(self, sql: str, rows: Iterable[tuple], *before: tuple[str, list[tuple]]) -> None:
        """executemany(sql, rows) in one transaction, after the statements `before` ((sql, rows) each)."""
        rows = list(rows)
        wait_s = busy_wait_s()
        deadline = time.monotonic() + wait_s
        try_s = _FIRST_TRY_S
        while True:
            con = self.manifest.connect()
            try:
                # each try waits up to its busy timeout, none past the deadline (at least a moment: a lock let go now)
                con.execute(f"PRAGMA busy_timeout = {int(1000 * max(0.1, min(try_s, deadline - time.monotonic())))}")
                try_s = _TRY_S
                with con:
                    for first_sql, first_rows in before:
                        con.executemany(first_sql, first_rows)
                    con.executemany(sql, rows)
                return
            except sqlite3.Error as exc:
                low = str(exc).lower()
                if not ("locked" in low or "busy" in low):
                    raise self.manifest.failure(exc) from None
                if time.monotonic() < deadline:
                    log.warning("the manifest is being written by another process (a `chorus-batch run` committing a "
                                "version?); waiting for it to finish (up to %s in all, %s) before recording uploads",
                                _duration(wait_s), ENV_BUSY_WAIT)
                    continue
                raise ManifestError(
                    f"the manifest is busy: another process kept it locked for writing longer than the {_duration(wait_s)} "
                    f"a ledger write waits ({exc})", where=str(self.manifest.path),
                    fix=f"run again once it has finished (a `chorus-batch run` committing a large version), or set "
                        f"{ENV_BUSY_WAIT} to wait longer (seconds; default {BUSY_WAIT_S:.0f})") from None
            finally:
                con.close()

    def record(self, rows: list[dict]) -> None:
        """Write a batch of outcomes (dicts of `uploads` columns; `attempts` counts this try) in one
        transaction. A file confirmed before keeps its row: a later failure never unconfirms it."""
        if not rows:
            return
        verify_columns = ("verified_at", "verify_state", "verify_method")
        columns = [c for c in columns_of("uploads") if c not in verify_columns]
        updates = ", ".join(
            f"{c} = uploads.attempts + excluded.attempts" if c == "attempts" else f"{c} = excluded.{c}"
            for c in columns if c not in ("central", "version", "file_id"))
        # A file sent again (verify found it damaged) is unverified until verify looks at it again (unless the upload
        # read back the bytes of a blob it found there without a Content-MD5: its row says so, as verify --download's).
        updates += (", " + ", ".join(f"{c} = CASE WHEN excluded.state IN ({', '.join(repr(s) for s in CONFIRMED)}) "
                                      f"THEN excluded.{c} ELSE uploads.{c} END" for c in verify_columns))
        columns += verify_columns
        sql = (f"INSERT INTO uploads ({', '.join(columns)}) VALUES ({_in(columns)}) "
               f"ON CONFLICT (central, version, file_id) DO UPDATE SET {updates} "
               f"WHERE uploads.state NOT IN ({', '.join(repr(s) for s in CONFIRMED)}) OR excluded.state IN "
               f"({', '.join(repr(s) for s in CONFIRMED)})")
        # A damaged file confirmed again no longer counts as failed verification in its submission (verify's n_bad):
        # `versions` kept saying so of a version that cannot finish yet (no listing check sets it again). The
        # version's verification is then void once no damaged file is left (its files are not all verified).
        mended = ("UPDATE submissions SET n_bad = n_bad - 1, "
                  "verified_at = CASE WHEN n_bad > 1 THEN verified_at END, "
                  "verify_method = CASE WHEN n_bad > 1 THEN verify_method END "
                  "WHERE central = ? AND version = ? AND n_bad > 0 AND EXISTS (SELECT 1 FROM uploads u WHERE "
                  f"u.central = ? AND u.version = ? AND u.file_id = ? AND u.verify_state IN ({_in(DAMAGED)}))",
                  [(self.central, row["version"], self.central, row["version"], row["file_id"], *DAMAGED)
                   for row in rows if row.get("state") in CONFIRMED])
        self._write(sql, [tuple(self.central if c == "central" else row.get(c, 0 if c == "attempts" else None)
                                for c in columns) for row in rows], mended)

    def add(self, rows: pl.DataFrame) -> None:
        """Add rows (a frame of `uploads` columns but `central`) for file versions the ledger holds nothing of yet,
        in one bulk transaction (an import's marks: many at once); a row already there is kept as it is."""
        if rows.height == 0:
            return
        from .manifest import _arrow_stream

        columns = ", ".join(["central", *rows.columns])
        with self.manifest.adbc() as con:  # (its errors become ManifestErrors)
            with con.cursor() as cur:
                cur.adbc_ingest("_new_uploads", _arrow_stream(rows.select(pl.lit(self.central).alias("central"),
                                                                          *rows.columns)), mode="create", temporary=True)
                # (WHERE true: SQLite's parser needs it before an upsert clause on an INSERT ... SELECT)
                cur.execute(f"INSERT INTO uploads ({columns}) SELECT {columns} FROM temp._new_uploads WHERE true "
                            "ON CONFLICT (central, version, file_id) DO NOTHING")
            con.commit()

    def submission(self, version: str, **values: str | int | None) -> None:
        """Set columns of this version's `submissions` row (created when missing)."""
        names = list(values)
        sql = (f"INSERT INTO submissions (central, version, {', '.join(names)}) VALUES (?, ?, {_in(names)}) "
               f"ON CONFLICT (central, version) DO UPDATE SET " + ", ".join(f"{n} = excluded.{n}" for n in names))
        self._write(sql, [(self.central, version, *values.values())])

    def unfinished(self, version: str) -> None:
        """Verify found blobs under <version>/ that the manifest does not list: the version is no longer complete
        (each upload lists its folder again and says so until they are gone), as upload leaves it when it finds them."""
        self._write("UPDATE submissions SET finished_at = NULL WHERE central = ? AND version = ?", [(self.central, version)])

    def finished_again(self, version: str) -> None:
        """Verify found a version whose manifest copy upload put there, left unfinished only over blobs in its folder
        that the manifest does not list, whole again (those blobs gone, every file and the copy as recorded)."""
        self._write("UPDATE submissions SET finished_at = ? WHERE central = ? AND version = ? AND finished_at IS NULL "
                    "AND manifest_copied_at IS NOT NULL", [(iso(utc_now()), self.central, version)])

    def give_up(self, version: str, rows: pl.DataFrame) -> None:
        """rows (file_id, last_error): confirmed file versions whose blob verify found damaged and whose bytes
        a later version replaced or removed: 'superseded' from now on (nothing can send them again), keeping
        verify's finding (verify_state) and the etag it saw."""
        if rows.height == 0:
            return
        self._write("UPDATE uploads SET state = 'superseded', last_error = ? WHERE central = ? AND version = ? "
                    f"AND file_id = ? AND verify_state IN ({_in(DAMAGED)})",
                    [(message, self.central, version, file_id, *DAMAGED)
                     for file_id, message in rows.select("file_id", "last_error").iter_rows()])

    def start(self, version: str) -> None:
        self._write("INSERT INTO submissions (central, version, started_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (central, version) DO NOTHING", [(self.central, version, iso(utc_now()))])

    def record_verification(self, version: str, results: pl.DataFrame, method: str) -> None:
        """results: file_id, verify_state (ok | missing | size | md5 | content) and the blob's etag (null: none)
        of each confirmed file version, and `vouched`: a blob without a Content-MD5 whose bytes an earlier --download
        read back as it is (its row keeps that check). A damaged blob's etag is kept: the next upload may replace that
        blob; so is the etag of a blob whose bytes a download found right: while it is the same blob, they vouch for it."""
        now = iso(utc_now())
        rows = results.filter(~pl.col("vouched")) if "vouched" in results.columns else results
        if "read_back" not in rows.columns:
            rows = rows.with_columns(read_back=pl.lit(False))
        # read_back: a blob a listing check read back (its etag had moved, size and Content-MD5 as recorded) and found
        # right: its new etag is recorded, as a download's is, so that the next listing finds it as recorded
        self._write("UPDATE uploads SET verify_state = ?, verified_at = ?, verify_method = ?, "
                    f"etag = CASE WHEN ? IN ({_in(DAMAGED)}) OR (? = 'ok' AND (? = 'download' OR ?)) THEN ? ELSE etag END "
                    "WHERE central = ? AND version = ? AND file_id = ?",
                    [(state, now, method, state, *DAMAGED, state, method, bool(read), etag, self.central, version,
                      file_id)
                     for file_id, state, etag, read in rows.select("file_id", "verify_state", "etag",
                                                                   "read_back").iter_rows()])
        n_bad = results.filter(pl.col("verify_state") != "ok").height
        self.submission(version, verified_at=now, verify_method=method, n_bad=n_bad)


def require_version(manifest: Manifest, label: str) -> None:
    if manifest.query_frame("SELECT label FROM versions WHERE label = ?", (label,)).height == 0:
        raise UsageError(f"no version {label!r} in the manifest", where=str(manifest.path),  # a mistaken --version
                         fix="list the versions with `chorus-batch versions`")


UPLOAD_STATE_SCHEMA = {
    "version": pl.String, "central": pl.String, "n_files": pl.Int64, "n_uploaded": pl.Int64, "n_not_sent": pl.Int64,
    "bytes_uploaded": pl.Int64, "finished_at": pl.String, "verified_at": pl.String, "verify_method": pl.String,
    "n_bad": pl.Int64, "manifest_copied_at": pl.String, "n_imported_unverified": pl.Int64,
}


def upload_state(manifest: Manifest) -> pl.DataFrame:
    """Per version and central container: files to submit, confirmed, not sent (stale, missing, failed,
    superseded, ...), bytes confirmed, and the submission's state. Versions never uploaded have no row."""
    return manifest.query_frame(
        "WITH n AS (SELECT version, count(*) AS n_files FROM changes "
        f"WHERE change IN ({_in(SUBMITTED)}) GROUP BY version), "
        "u AS (SELECT central, version, "
        f"sum(state IN ({_in(CONFIRMED)})) AS n_uploaded, sum(state NOT IN ({_in(CONFIRMED)})) AS n_not_sent, "
        f"sum(CASE WHEN state IN ({_in(CONFIRMED)}) THEN bytes ELSE 0 END) AS bytes_uploaded, "
        "sum(state = 'imported' AND (verify_state IS NULL OR verify_state != 'ok')) AS n_imported_unverified "
        "FROM uploads GROUP BY central, version), "
        "k AS (SELECT central, version FROM u UNION SELECT central, version FROM submissions) "
        "SELECT k.version, k.central, coalesce(n.n_files, 0) AS n_files, coalesce(u.n_uploaded, 0) AS n_uploaded, "
        "coalesce(u.n_not_sent, 0) AS n_not_sent, coalesce(u.bytes_uploaded, 0) AS bytes_uploaded, s.finished_at, "
        "s.verified_at, s.verify_method, s.n_bad, s.manifest_copied_at, coalesce(u.n_imported_unverified, 0) "
        "AS n_imported_unverified FROM k "
        "LEFT JOIN n ON n.version = k.version LEFT JOIN u ON u.central = k.central AND u.version = k.version "
        "LEFT JOIN submissions s ON s.central = k.central AND s.version = k.version ORDER BY k.version, k.central",
        (*SUBMITTED, *CONFIRMED, *CONFIRMED, *CONFIRMED), schema=UPLOAD_STATE_SCHEMA)


def upload_summary(state: pl.DataFrame) -> pl.DataFrame:
    """One line per version that was uploaded: its upload state in words, for `versions` and `report`."""
    def words(row: dict) -> str:
        text = f"{row['n_uploaded']}/{row['n_files']} sent"
        if row["n_not_sent"]:
            text += f", {row['n_not_sent']} not sent"
        if row["n_imported_unverified"]:  # marked uploaded by chorus-upload: nothing here has checked them yet
            text += f", {row['n_imported_unverified']} imported from chorus-upload and not verified"
        if row["verified_at"]:
            text += (", verified" + (f" ({row['verify_method']})" if row["verify_method"] else "")
                     if not row["n_bad"] else f", {row['n_bad']} failed verification")
        elif row["finished_at"]:
            text += ", complete"
        # Copied but not finished: the only cause an upload leaves so is blobs in the folder the manifest does not
        # list. It read "35/35 sent, verified" while each verify exited 1 over them.
        if row["manifest_copied_at"] and not row["finished_at"] and not row["n_bad"]:
            text += ", not complete: blobs in its folder the manifest does not list (`chorus-batch verify` names them)"
        return text

    if state.height == 0:
        return pl.DataFrame(schema={"version": pl.String, "upload": pl.String})
    return (state.with_columns(pl.struct(state.columns).map_elements(words, return_dtype=pl.String).alias("upload"))
            .group_by("version", maintain_order=True)
            .agg(pl.concat_str([pl.col("central"), pl.lit(": "), pl.col("upload")]).str.join("; ").alias("upload")))


__all__ = ["CONFIRMED", "DAMAGED", "SUBMITTED", "UploadLedger", "upload_state", "upload_summary", "require_version"]


def versions_with_upload_state(manifest: Manifest) -> pl.DataFrame:
    """`versions` with an `upload` column: each version's upload state in words (null when never uploaded: as
    --json gives every field with nothing to say, the text table shows it blank)."""
    versions = manifest.versions()
    summary = upload_summary(upload_state(manifest)).rename({"version": "label"})
    return versions.join(summary, on="label", how="left")
