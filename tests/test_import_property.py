"""import-journal over random histories (hypothesis): a journal written as chorus-upload writes one (v2 and v1
schema) from a random sequence of trees imports into a manifest whose every version is that tree, and whose
ledger holds exactly the journal's upload marks."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from chorus_batch.review import open_manifest
from chorus_batch.upstream.importer import import_journal

PATHS = ["OMOP/person.csv", "OMOP/visit_occurrence.csv", "000123/Waveforms/20240101/000123_20240101_083000.hea",
         "000123/Waveforms/20240101/000123_20240101_083000.dat", "2087/Waveforms/20240305/2087_20240305_120000.dat",
         "000045/Images/CT/1.2.3/1.2.3.4/1.dcm", "000045/Images/CT/1.2.3/1.2.3.4/2.dcm", "Metadata/submission.json"]
START_US = 1_796_135_917_000_000  # 2026-12-01T14:38:37Z


def _ddl(schema: int) -> str:
    """The DDL as chorus-upload writes it: `sqlite3 .schema` of the fixture journals (sqlite_sequence is SQLite's own)."""
    text = (Path(__file__).parent / "fixtures" / "chorus-upload" / "schema" / f"journal_v{schema}_schema.sql").read_text()
    return "\n".join(line for line in text.splitlines() if "sqlite_sequence" not in line)


# A file's state: (content number, mtime in whole seconds); content n has a size and MD5 of its own.
file_state = st.tuples(st.integers(0, 3), st.integers(0, 2))
trees = st.lists(st.dictionaries(st.sampled_from(PATHS), file_state, max_size=len(PATHS)), min_size=1, max_size=4)


def _content(n: int, path: str) -> tuple[int, str]:
    # Some paths share contents (renames, copies); an empty file never pairs.
    key = f"{n}" if n < 2 else f"{n}:{path}"
    return (0 if n == 0 else 100 + n, hashlib.md5(key.encode()).hexdigest())


def write_journal(path: Path, history: list[dict], marks: list[set], schema: int) -> list[str]:
    """A journal as chorus-upload's `journal update` (full mode) and `file mark_as_uploaded_*` write one: one
    update per tree (its rows a few ms after the command's whole-second DATETIME), marks after each."""
    labels = [f"2025{k + 1:02d}01000000" for k in range(len(history))]
    con = sqlite3.connect(path)
    con.executescript(_ddl(schema))
    history_table = "command_history_v2" if schema == 2 else "command_history"
    active: dict[str, dict] = {}  # path -> its current row
    rows: list[dict] = []
    previous: dict = {}
    for k, (tree, label) in enumerate(zip(history, labels)):
        start = START_US + k * 3_600_000_000
        con.execute(f"INSERT INTO {history_table} (DATETIME, COMMON_PARAMS, COMMAND, PARAMS, SRC_PATHS, DEST_PATH) "
                    "VALUES (?, '--config /data/config.toml', 'journal update', ?, ?, 'None')",
                    (_datetime(start), f"--version {label}", json.dumps({"OMOP": "/data/site"})))
        now = start + 4_321  # the run's clock, after its DATETIME
        for p in sorted(set(previous) | set(tree)):
            old, new = previous.get(p), tree.get(p)
            if old == new:
                continue
            row = active.pop(p, None)
            if row is not None:
                row["invalid"] = now
            if new is None:
                continue
            size, md5 = _content(new[0], p)
            same_content = old is not None and old[0] == new[0]
            created = {"path": p, "size": size, "md5": md5, "mtime": (1_733_011_200 + 60 * new[1]) * 1_000_000,
                       "valid": now, "invalid": None,
                       # an mtime-only change keeps the old row's version and upload mark
                       "label": row["label"] if same_content and row else label,
                       "mark": row["mark"] if same_content and row else None}
            active[p] = created
            rows.append(created)
        for p in sorted(marks[k]):
            if p in active and active[p]["mark"] is None and active[p]["label"] == label:
                active[p]["mark"] = label
        previous = tree
    for row in rows:
        modality = "OMOP" if row["path"].startswith("OMOP/") else "Metadata" if row["path"].startswith("Metadata/") \
            else row["path"].split("/")[1]
        person = None if modality in ("OMOP", "Metadata") else int(row["path"].split("/")[0])  # zeros lost, as upstream
        if schema == 2:
            folder, name = row["path"].rsplit("/", 1)
            ids = [_id(con, table, column, value) for table, column, value in (
                ("srcpaths", "SRC_PATH", folder), ("modalities", "MODALITY", modality), ("versions", "VERSION", row["label"]))]
            mark_id = _id(con, "uploads", "UPLOAD_DT", row["mark"]) if row["mark"] else None
            con.execute("INSERT INTO journal_v2 (PERSON_ID, SRC_PATH_ID, FILENAME, MODALITY_ID, SRC_MODTIME_us, SIZE, MD5, "
                        "TIME_VALID_us, TIME_INVALID_us, UPLOAD_DT_ID, VERSION_ID) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (person, ids[0], name, ids[1], row["mtime"], row["size"], row["md5"], row["valid"],
                         row["invalid"], mark_id, ids[2]))
        else:
            con.execute("INSERT INTO journal (PERSON_ID, FILEPATH, MODALITY, SRC_MODTIME_us, SIZE, MD5, TIME_VALID_us, "
                        "TIME_INVALID_us, UPLOAD_DTSTR, VERSION, STATE) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ADDED')",
                        (person, row["path"], modality, row["mtime"], row["size"], row["md5"], row["valid"],
                         row["invalid"], row["mark"], row["label"]))
    con.commit()
    con.close()
    return labels


def _id(con: sqlite3.Connection, table: str, column: str, value: str) -> int:
    # INSERT OR IGNORE under AUTOINCREMENT burns ids, as upstream's lookups show: ids with gaps (join on them)
    con.execute(f"INSERT INTO {table} ({column}) VALUES ('(burnt)')")
    con.execute(f"DELETE FROM {table} WHERE {column} = '(burnt)'")
    con.execute(f"INSERT OR IGNORE INTO {table} ({column}) VALUES (?)", (value,))
    return con.execute(f"SELECT id FROM {table} WHERE {column} = ?", (value,)).fetchone()[0]


def _datetime(us: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(us // 1_000_000))


@hyp_settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=trees, marks=st.lists(st.sets(st.sampled_from(PATHS)), min_size=4, max_size=4),
       schema=st.sampled_from([1, 2]))
def test_every_imported_version_is_its_tree_and_the_ledger_holds_the_marks(history, marks, schema):
    with tempfile.TemporaryDirectory() as folder:
        journal, db = Path(folder) / "journal.db", Path(folder) / "m.sqlite"
        labels = write_journal(journal, history, marks, schema)
        if not any(history):
            return  # nothing to import: refused (test_import_journal covers the message)
        import_journal(str(journal), str(db), central="az://central/")
        reader = open_manifest(db)
        versions = reader.versions()["label"].to_list()
        expected_versions = []
        for k, (tree, label) in enumerate(zip(history, labels)):
            want = {p: _content(n, p) for p, (n, _) in tree.items()}
            before = {p: _content(n, p) for p, (n, _) in history[k - 1].items()} if k else {}
            if want != before:  # a content change is a version; an mtime-only change is not
                expected_versions.append(label)
                files = reader.files(label)
                assert dict(zip(files["srcfile"], zip(files["size"], files["md5"]))) == want
        assert versions == expected_versions
        # current mtimes are the latest tree's (in place, µs as upstream kept them)
        current = reader.files()
        assert dict(zip(current["srcfile"], current["mtime_ns"])) == {
            p: (1_733_011_200 + 60 * m) * 1_000_000_000 for p, (_, m) in history[-1].items()}
        con = sqlite3.connect(journal)
        if schema == 2:
            marked = con.execute("SELECT s.SRC_PATH || '/' || j.FILENAME, v.VERSION, j.MD5 FROM journal_v2 j JOIN srcpaths "
                                 "s ON s.id = j.SRC_PATH_ID JOIN versions v ON v.id = j.VERSION_ID JOIN uploads u ON "
                                 "u.id = j.UPLOAD_DT_ID").fetchall()
        else:
            marked = con.execute("SELECT FILEPATH, VERSION, MD5 FROM journal WHERE UPLOAD_DTSTR IS NOT NULL").fetchall()
        con.close()
        ledger = sqlite3.connect(db).execute(
            "SELECT f.srcfile, u.version, u.md5 FROM uploads u JOIN source_files f USING (file_id)").fetchall()
        assert set(ledger) == set(marked)
