"""Python's sqlite3 and the ADBC driver carry two SQLite libraries; one process must never hold both open on one
manifest (each drops the other's POSIX locks: sqlite.org/howtocorrupt.html 2.2.1). store.manifest.one_library refuses
the second before it opens, and the whole suite runs under that check."""

from __future__ import annotations

import pytest

from chorus_batch.store import Manifest
from chorus_batch.store.manifest import _OPEN_BY_LIBRARY


def test_an_adbc_connection_while_a_sqlite3_one_is_open_is_refused_and_counts_go_back(tmp_path):
    m = Manifest(tmp_path / "m.sqlite")
    m.ensure_schema()
    with m._open() as con:
        con.execute("SELECT 1").fetchone()
        with pytest.raises(RuntimeError, match="two SQLite libraries"):
            with m.adbc():
                pass
    with m.adbc() as con:  # one library at a time: fine, and a sqlite3 one may not open inside it
        with pytest.raises(RuntimeError, match="two SQLite libraries"):
            m.connect()
    raw = m.connect()
    raw.close()
    with m.adbc():
        pass
    assert set(_OPEN_BY_LIBRARY[str((tmp_path / "m.sqlite").resolve())].values()) == {0}
