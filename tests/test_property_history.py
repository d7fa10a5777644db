"""A manifest's history as a state machine (hypothesis stateful): random nights of a site, each followed by a run.

A night is one change of the site's tree — a file added, removed, renamed (within or between persons), a whole person
folder removed or renamed, content replaced at the same size with the mtime moved, a touch only, the root emptied
(a disk not mounted) and restored as it was (mtimes kept), an exclusion glob added or dropped — then a run in full or
append mode, with --max-delete 50% or all, the library called as the command line calls it
(refuse_empty_first=True). The model (test_property.expected_changes, the README's change and rename rules) says what
the manifest holds after it: in full mode the tree the globs leave, in append mode that over what was recorded; and
whether the run is refused, exit 5: more removed than --max-delete allows, a root that lists no file (after the globs)
though the previous version had files there (append mode too), or a first run that would record no file. After each
night: the current rows are the model (paths, sizes, MD5s); each path's rows follow one another in time, never two
valid at once; every version reads back (as-of) as it was, its change set is the difference from the version before,
any two versions diff as their states (test_property.check_nights); a refused run changes nothing in the manifest but
its `runs` row (exit code 5); the proc_ids `registry` gave a session never change, nor go to another session.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, event as hyp_event, settings as hyp_settings, strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from chorus_batch.errors import MassRemovalRefused
from chorus_batch.pipeline import run
from chorus_batch.registries import make_registries
from conftest import settings as run_settings
from test_property import _make_room, check_nights, expected_changes, tree_state

FILES = [  # paths that fit the layouts (sessions and accessions, so `registry` gives proc_ids), and one that fits none
    "000001/Waveforms/000001_20200101_101010_60.dat",
    "000001/Waveforms/S1/S1.hea",
    "000001/Images/ST1/SE1/000001_20200101_101010_CT_SE1_0001.dcm",
    "000002/Waveforms/000002_20200102_101010_60.dat",
    "000002/Images/ST1/SE1/000002_20200102_101010_CT_SE1_0001.dcm",
    "000003/Waveforms/S2/S2.hea",
    "stray.txt",
]
PERSONS = ["000001", "000002", "000003"]
CONTENTS = [b"", b"a", b"b", b"ab", b"ba", b"abc"]  # empty files (never paired as renames); same size, other bytes
GLOBS = ["*.dcm", "000002/*", "S1", "stray.txt", "*_60.dat"]
MODES = st.sampled_from(["full", "append"])
LIMITS = st.sampled_from(["50%", "all"])

# tables a refused run may write to: its own row in `runs` (and the lock's bookkeeping, none of the history)
RUN_TABLES = {"runs", "run_errors"}


def excluded(path: str, globs: list[str]) -> bool:
    """fnmatch's word on a glob of --exclude: without '/', any name of the path; with '/', the path from the root or a
    folder above the file (as .gitignore)."""
    parts = path.split("/")
    for glob in globs:
        if "/" not in glob:
            if any(fnmatch.fnmatchcase(name, glob) for name in parts):
                return True
        elif any(fnmatch.fnmatchcase("/".join(parts[:k]), glob) for k in range(1, len(parts) + 1)):
            return True
    return False


def event(text: str) -> None:
    """hypothesis' statistics (what the nights drew), where hypothesis runs the machine."""
    if currently_in_test_context():
        hyp_event(text)


def dump(db: Path) -> dict[str, list]:
    """Every table's rows but the runs' own, in a fixed order."""
    con = sqlite3.connect(db)
    try:
        names = [n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                 if n not in RUN_TABLES and not n.startswith("sqlite_")]
        return {n: sorted(con.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    finally:
        con.close()


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


class SiteNights(RuleBasedStateMachine):
    @initialize(tree=st.dictionaries(st.sampled_from(FILES), st.sampled_from(CONTENTS)))
    def start(self, tree) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="chorus-history-"))
        self.site, self.db, self.stash = self.work / "site", self.work / "m.sqlite", self.work / "stash"
        self.site.mkdir()
        for rel, data in tree.items():  # the site before its first run (an empty one is refused)
            _make_room(self.site, rel)
            (self.site / rel).write_bytes(data)
        self.globs: list[str] = []
        self.recorded: dict[str, tuple[int, str]] = {}  # the model: the current rows (path -> size, MD5)
        self.states: dict[str, dict[str, tuple[int, str]]] = {}  # each version's files
        self.proc_ids: dict[str, int] = {}  # record_key -> proc_id, as `registry` gave them
        self.clock = time.time()

    def teardown(self) -> None:
        try:  # (after each night the diffs of the latest version with each; here those of any two, as they are now)
            if self.states and self.db.exists():
                check_nights(self.db, self.states)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    # --- the night's one change, then its run ---------------------------------------------------------------------

    def _tidy(self) -> None:
        for folder, _dirs, _files in sorted(os.walk(self.site), reverse=True):  # an emptied folder is no file
            if folder != str(self.site) and not os.listdir(folder):
                os.rmdir(folder)

    def _later(self) -> float:
        """An mtime later than any before (a run's racily-clean check aside, a change is seen by its mtime)."""
        self.clock = max(self.clock, time.time()) + 2
        return self.clock

    @rule(rel=st.sampled_from(FILES), data=st.sampled_from(CONTENTS), mode=MODES, limit=LIMITS)
    def write(self, rel, data, mode, limit) -> None:
        _make_room(self.site, rel)
        (self.site / rel).write_bytes(data)
        self.night(mode, limit)

    @rule(mode=MODES, limit=LIMITS)
    def quiet(self, mode, limit) -> None:
        """A night with no change."""
        self.night(mode, limit)

    @rule(rel=st.sampled_from(FILES), mode=MODES, limit=LIMITS)
    def remove(self, rel, mode, limit) -> None:
        if (self.site / rel).is_file():
            (self.site / rel).unlink()
            self._tidy()
        self.night(mode, limit)

    @rule(rel=st.sampled_from(FILES), to=st.sampled_from(FILES), mode=MODES, limit=LIMITS)
    def rename(self, rel, to, mode, limit) -> None:
        if (self.site / rel).is_file() and rel != to and not (self.site / to).exists():
            (self.site / to).parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.site / rel, self.site / to)
            self._tidy()
        self.night(mode, limit)

    @rule(person=st.sampled_from(PERSONS), mode=MODES, limit=LIMITS)
    def remove_person(self, person, mode, limit) -> None:
        shutil.rmtree(self.site / person, ignore_errors=True)
        self.night(mode, limit)

    @rule(person=st.sampled_from(PERSONS), to=st.sampled_from(PERSONS), mode=MODES, limit=LIMITS)
    def rename_person(self, person, to, mode, limit) -> None:
        if (self.site / person).is_dir() and not (self.site / to).exists():
            os.rename(self.site / person, self.site / to)
        self.night(mode, limit)

    @rule(rel=st.sampled_from(FILES), mode=MODES, limit=LIMITS)
    def same_size(self, rel, mode, limit) -> None:
        path = self.site / rel
        if path.is_file() and path.stat().st_size:
            path.write_bytes(bytes(b ^ 1 for b in path.read_bytes()))
            t = self._later()
            os.utime(path, (t, t))
        self.night(mode, limit)

    @rule(rel=st.sampled_from(FILES), mode=MODES, limit=LIMITS)
    def touch(self, rel, mode, limit) -> None:
        if (self.site / rel).is_file():
            t = self._later()
            os.utime(self.site / rel, (t, t))
        self.night(mode, limit)

    @precondition(lambda self: not self.stash.exists())
    @rule(mode=MODES, limit=LIMITS)
    def empty_root(self, mode, limit) -> None:
        """The root's contents put aside whole (a disk not mounted), mtimes kept."""
        os.rename(self.site, self.stash)
        self.site.mkdir()
        self.night(mode, limit)

    @precondition(lambda self: self.stash.exists())
    @rule(mode=MODES, limit=LIMITS)
    def restore_root(self, mode, limit) -> None:
        """The root as it was before it was emptied (what was written there since is lost, as a mount hides it)."""
        shutil.rmtree(self.site)
        os.rename(self.stash, self.site)
        self.night(mode, limit)

    @rule(glob=st.sampled_from(GLOBS), mode=MODES, limit=LIMITS)
    def toggle_glob(self, glob, mode, limit) -> None:
        self.globs = [g for g in self.globs if g != glob] if glob in self.globs else [*self.globs, glob]
        self.night(mode, limit)

    # --- the run and what it must leave -----------------------------------------------------------------------------

    def _expected_refusal(self, mode: str, limit: str, listed: dict) -> bool:
        if limit == "all":
            return False
        if not self.states:
            return not listed and not self.recorded  # a first run that would record no file
        if not self.recorded:
            return False  # the previous version holds no file: nothing to remove, no root that held files
        if not listed:
            return True  # the root lists no file (after the globs) though the previous version had files there
        if mode == "append":
            return False
        removed = sum(1 for c in expected_changes(self.recorded, listed) if c[0] == "removed")
        return removed > len(self.recorded) * 50 / 100

    def night(self, mode: str, limit: str) -> None:
        on_disk = tree_state(self.site)
        listed = {p: v for p, v in on_disk.items() if not excluded(p, self.globs)}
        expected = listed if mode == "full" else {**self.recorded, **listed}
        refuse = self._expected_refusal(mode, limit, listed)
        before = dump(self.db) if self.db.exists() else None
        runs_before = query(self.db, "SELECT count(*) FROM runs")[0][0] if self.db.exists() else 0
        where = f"{mode} --max-delete {limit} --exclude {self.globs} listed {sorted(listed)}"
        try:
            result = run(run_settings(self.site, self.db, mode=mode, max_delete=limit, exclude=list(self.globs),
                                      validate_site=False), refuse_empty_first=True)
        except MassRemovalRefused as exc:
            assert refuse, f"refused, not as the model says: {where}: {exc.what}"
            after = dump(self.db)
            if before is None:  # a first run: the manifest it made holds its runs row, and no history
                before = {name: ([] if name != "meta" else after["meta"]) for name in after}
            assert after == before, f"a refused run changed the manifest: {where}"
            runs = query(self.db, "SELECT exit_code, version FROM runs ORDER BY run_id")
            assert len(runs) == runs_before + 1 and runs[-1] == (5, None), (where, runs[-1])
            event(f"refused ({mode})")
            self.check()
            return
        assert not refuse, f"not refused, though the model says it is: {where}"
        event(f"{'a version' if result.label else 'no version'} ({mode})")
        if result.label:
            self.states[result.label] = expected
        elif self.states:
            assert self.states[max(self.states)] == expected, f"no version, yet the files changed: {where}"
        else:
            assert not expected, where
        self.recorded = expected
        self.check()
        if result.label:
            self.registry()

    def check(self) -> None:
        if not self.db.exists():
            return
        current = query(self.db, "SELECT srcfile, size, md5 FROM source_files WHERE time_invalid IS NULL")
        assert {p: (s, m) for p, s, m in current} == self.recorded
        assert len(current) == len(self.recorded)
        # each path's rows one after the other, in versions and in time: none begins before the one before it ended
        # (times are of the second: two versions committed within one give a row valid for none of its time)
        rows = query(self.db, "SELECT srcfile, version_valid, version_invalid, time_valid, time_invalid "
                              "FROM source_files ORDER BY srcfile, version_valid, file_id")
        for earlier, later in zip(rows, rows[1:]):
            if earlier[0] == later[0]:
                assert earlier[2] is not None and earlier[2] <= later[1], (earlier, later)
                assert earlier[4] is not None and earlier[4] <= later[3], (earlier, later)
        for row in rows:
            assert (row[2] is None) == (row[4] is None), row
            assert row[2] is None or (row[1] < row[2] and row[3] <= row[4]), row
        if self.states:
            check_nights(self.db, self.states, diffs_of_latest_only=True)  # as-of reads, change sets, diffs, histories

    def registry(self) -> None:
        """`registry` on the latest version: the proc_ids given before are the same sessions' still."""
        make_registries(str(self.db), self.work / "release", argv=["registry"])
        given = dict(query(self.db, "SELECT record_key, proc_id FROM registry WHERE proc_id IS NOT NULL"))
        assert len(set(given.values())) == len(given)
        for key, proc_id in self.proc_ids.items():
            assert given.get(key) == proc_id, (key, proc_id, given.get(key))
        event(f"registry: {min(len(given), 3)}+ proc_ids")
        self.proc_ids.update(given)


SiteNights.TestCase.settings = hyp_settings(max_examples=12, stateful_step_count=8, deadline=None,
                                            suppress_health_check=list(HealthCheck))
test_site_nights_keep_the_manifest_history_whole = SiteNights.TestCase


def test_the_refusals_of_an_empty_root_leave_the_history_as_it_was():
    """The nights the machine draws only now and then, every time: a first run on an empty root (refused), then files;
    the root emptied in append mode and in full mode (refused, each a `runs` row only), restored with its mtimes (no
    version), a glob that leaves out every file in append mode (refused), the same with --max-delete all (no version
    in append mode; in full mode a version of no file), and the files back."""
    machine = SiteNights()
    try:
        machine.start(tree={})
        machine.quiet(mode="full", limit="50%")  # refused: a first run that would record no file
        assert not machine.states
        for rel, data in zip(FILES, CONTENTS[1:]):
            machine.write(rel=rel, data=data, mode="full", limit="50%")
        machine.empty_root(mode="append", limit="50%")  # refused
        machine.quiet(mode="full", limit="50%")  # refused
        machine.restore_root(mode="full", limit="50%")  # nothing changed
        for glob in ("*.dcm", "*_60.dat", "S1", "stray.txt"):  # from "S1" on every file is left out: refused
            machine.toggle_glob(glob=glob, mode="append", limit="50%")
        assert len(machine.states) == 5 and sum(1 for _ in machine.recorded) == 5
        machine.quiet(mode="append", limit="all")  # every file left out, all kept: no version
        machine.quiet(mode="full", limit="all")  # every file left out and removed: a version of no file
        assert machine.recorded == {} and len(machine.states) == 6
        runs = query(machine.db, "SELECT exit_code FROM runs ORDER BY run_id")
        assert [code for (code,) in runs].count(5) == 5, runs
    finally:
        machine.teardown()
