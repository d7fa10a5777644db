"""Parquet snapshots of versions (`run --parquet DIR`), and the reader that answers review
questions from them as from the manifest:

    DIR/version=<label>/{manifest,changes,registry,scan_errors,findings}.parquet, snapshot.json
    DIR/versions.parquet
    DIR/manifest.json    which manifest's snapshots the folder holds (OWNER_FILE)
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from ..diff import private_duckdb
from ..errors import ForeignSnapshots, ManifestError, UsageError
from ..faults import pause
from ..frames import FINDINGS_SCHEMA, schema_of
from ..fsutil import private_folder, remove_abandoned, write_private
from ..review import CHANGE_COUNTS_SCHEMA, FILE_COLUMNS, FILE_SCHEMA, HISTORY_SCHEMA, SLICE_ROWS, ManifestReader
from .manifest import Manifest


# In the order they are written: the file list last, so that a folder with manifest.parquet holds every part (a
# reader takes a version by it; a run killed before it, or still writing, leaves a version no reader sees).
SNAPSHOT_PARTS = ("changes", "registry", "scan_errors", "findings", "manifest")


def part_schemas() -> dict[str, dict]:
    """Each part's columns and types, the manifest's own (frames.MANIFEST_TABLES): every version's snapshot the
    same, so that a reader scans them all together (a column null in one version was inferred as Int64 there, and
    text in the next: `pl.scan_parquet` of the folder and `history` failed with a type mismatch)."""
    from .manifest import CHANGES_SCHEMA

    return {"changes": CHANGES_SCHEMA, "registry": schema_of("registry"),
            "scan_errors": schema_of("scan_errors", ("srcfile", "kind", "message")), "findings": FINDINGS_SCHEMA,
            "manifest": schema_of("source_files")}


def _part_rows(part: Path, schema: dict | None) -> int | None:
    """The rows of a part, or None if it is not a complete Parquet file with the columns and types it must have
    (any, given no `schema`)."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(part).num_rows
        if schema is not None and dict(pl.read_parquet_schema(part)) != dict(schema):
            return None
    except Exception:  # (missing, truncated, not Parquet at all)
        return None
    return rows


# Written after every part, with their row counts: a run asks each version's snapshot whether it is whole, and
# reading five Parquet footers and schemas a version grew with the versions (a site's nightly runs: thousands);
# this is one small file. A snapshot without it (an older release's, a run killed just before it) is read whole.
SNAPSHOT_MARK = "snapshot.json"
_MARK_FORMAT = 1


def has_snapshot(label: str, directory: str, expected: dict | None = None) -> bool:
    """Whether `directory` holds every part of version `label`'s snapshot, each a readable Parquet file with the
    manifest's columns and types, and (given `expected`, the version's row of `Manifest.versions()`) as many
    files and changes as the version has. A run killed while writing them leaves some out, or a snapshot written by
    an older release has other types: the next run writes it again. A snapshot found whole without its mark
    gets one."""
    target = Path(directory) / f"version={label}"
    rows = _marked_rows(target)
    marked = rows is not None
    if rows is None:
        rows = {name: _part_rows(target / f"{name}.parquet", schema) for name, schema in part_schemas().items()}
        if any(n is None for n in rows.values()):
            return False
    if expected is not None:
        n_changes = sum(expected[f"n_{kind}"] for kind in ("added", "removed", "replaced", "renamed"))
        if rows["manifest"] != expected["n_files"] or rows["changes"] != n_changes:
            return False
    if not marked:
        _mark(target, rows)
    return True


def _stamp(part: Path) -> list[int]:
    stat = part.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _marked_rows(target: Path) -> dict[str, int] | None:
    """The part row counts the mark records, if it is of this format and every part is still there with the size
    and mtime it had when marked (a part written or cut since is read whole)."""
    try:
        mark = json.loads((target / SNAPSHOT_MARK).read_text(encoding="utf-8"))
        rows, stamps = mark["rows"], mark["stamps"]
        if mark.get("format") != _MARK_FORMAT or set(rows) != set(SNAPSHOT_PARTS) or not all(
                isinstance(rows[name], int) and _stamp(target / f"{name}.parquet") == stamps[name] for name in rows):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return rows


def _mark(target: Path, rows: dict[str, int]) -> None:
    stamps = {name: _stamp(target / f"{name}.parquet") for name in rows}
    write_private(target / SNAPSHOT_MARK, json.dumps({"format": _MARK_FORMAT, "rows": rows, "stamps": stamps}).encode())


def write_snapshots(manifest: Manifest, label: str, directory: str, list_versions: bool = True) -> Path:
    """The version's files (its rows as they were then: still valid), change set, records, errors and findings,
    and all versions (with `list_versions`); each file written atomically (a temporary name, then renamed) and
    owner-only, in the manifest's types, and its row count checked against the version."""
    root = Path(directory)
    target = root / f"version={label}"
    made = not target.exists()
    private_folder(target)
    try:
        _write_parts(manifest, label, root, target)
        if list_versions:
            _list_versions(manifest, root)
        return target
    except BaseException:
        # (a --parquet disk full at the first part left an empty version=<label>/ folder behind: taken away; one with
        # parts in it stays, unmarked, and the next run writes it again)
        if made:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise


def _write_parts(manifest: Manifest, label: str, root: Path, target: Path) -> Path:
    for folder in root.glob("version=*"):  # parts of any version a killed run was writing
        remove_abandoned(folder, ".*.tmp")
    schemas = part_schemas()
    latest = manifest.latest_version()
    current = latest is not None and latest["label"] == label
    rows_sql = ("SELECT * FROM source_files WHERE time_invalid IS NULL ORDER BY srcfile" if current else  # the index
                "SELECT * FROM source_files WHERE version_valid <= ? AND (version_invalid IS NULL OR version_invalid > ?) "
                "ORDER BY srcfile")
    parts = {
        "changes": lambda: manifest.changes(label)[1],
        "registry": lambda: manifest.query_frame("SELECT * FROM registry ORDER BY record_id"),
        "scan_errors": lambda: manifest.version_errors(label),
        "findings": lambda: manifest.validation.findings(label),
        "manifest": lambda: manifest.query_frame(rows_sql, () if current else (label, label), schema=schemas["manifest"])
        .with_columns(pl.lit(None, pl.String).alias("time_invalid"), pl.lit(None, pl.String).alias("version_invalid")),
    }
    assert tuple(parts) == SNAPSHOT_PARTS
    (target / SNAPSHOT_MARK).unlink(missing_ok=True)  # written again last, when every part is
    written: dict[str, int] = {}
    for name, frame in parts.items():  # one at a time: a 1M-file version's rows alone are ~500 MB
        typed = frame().select(list(schemas[name])).cast(schemas[name])  # type: ignore[arg-type]
        write_private(target / f"{name}.parquet", typed.write_parquet)
        if _part_rows(target / f"{name}.parquet", schemas[name]) != typed.height:
            raise ManifestError(f"the snapshot of version {label} did not read back as written ({name}.parquet)",
                                where=str(target / f"{name}.parquet"),
                                fix="check the disk of the --parquet folder; the next run writes the snapshot again")
        written[name] = typed.height
        pause("snapshot")  # (crash and reader tests: a snapshot written in part)
    _mark(target, written)
    return target


# versions.parquet's key (Parquet file metadata) listing the versions whose commit times were edited by hand, as the
# manifest tells them by its runs table (Manifest.edited_version_times), which the folder does not hold: its readers
# took the edited times as true and answered `--as-of` with the wrong version where the manifest refuses the question.
EDITED_TIMES_KEY = "chorus_batch.edited_version_times"


def _list_versions(manifest: Manifest, root: Path) -> None:
    edited = json.dumps(manifest.edited_version_times())
    write_private(root / "versions.parquet",
                  lambda path: manifest.versions().write_parquet(path, metadata={EDITED_TIMES_KEY: edited}))


def listed_edited_times(directory: str | Path) -> list[str]:
    """The versions versions.parquet marks as having edited commit times (none: unmarked, an older release's
    table, or no table)."""
    try:
        said = pl.read_parquet_metadata(Path(directory) / "versions.parquet").get(EDITED_TIMES_KEY)
        edited = json.loads(said) if said else []
    except Exception:  # noqa: BLE001 - none, cut or replaced: said by the reader that reads it
        return []
    return [str(item) for item in edited] if isinstance(edited, list) else []


def _listed_labels(directory: str) -> list[str] | None:
    try:
        return pl.read_parquet(Path(directory) / "versions.parquet", columns=["label"])["label"].to_list()
    except Exception:  # noqa: BLE001 - none, cut or replaced
        return None


# Which manifest's snapshots a folder holds. Two manifests given one --parquet folder (a chorus.toml copied to a second
# site's job, a test manifest beside the real one) overwrote each other's versions.parquet run after run, silently; the
# readers then said one manifest's snapshots were "of no version of the manifest". A manifest is known by its
# manifest_id (meta, made with it) and its first version (label and commit time): the same for a copy or a restored
# backup, another for any other manifest. The id tells apart two manifests whose first versions were committed in the
# same second (labels and times are to the second: a manifest started again at once was taken for the one before); a
# folder named by an earlier release (no id) is known by the first version alone until its next snapshot.
OWNER_FILE = "manifest.json"


def _first_version(manifest: Manifest) -> dict | None:
    if not manifest.path.exists() or not manifest.path.stat().st_size:
        return None
    first = manifest.versions().head(1)
    return {"label": first["label"][0], "finished_at": first["finished_at"][0]} if first.height else None


def _manifest_id(manifest: Manifest) -> str | None:
    return manifest.state_identity()[0] if manifest.path.exists() and manifest.path.stat().st_size else None


def check_owner(manifest: Manifest, directory: str | Path) -> None:
    """A UsageError when `directory` holds the snapshots of another manifest than `manifest`, or lies inside a
    folder of snapshots (nothing is written)."""
    refuse_inside_snapshots(Path(directory))
    try:
        owner = json.loads((Path(directory) / OWNER_FILE).read_text("utf-8"))
        first = owner["first_version"]
    except (OSError, ValueError, KeyError, TypeError):  # (none yet, or damaged: written again with the next snapshot)
        return
    mine = _first_version(manifest)
    owner_id, mine_id = owner.get("manifest_id"), _manifest_id(manifest) if mine is not None else None
    if first == mine and (owner_id is None or owner_id == mine_id):
        return
    import os
    import shlex

    if owner.get("manifest") == os.path.abspath(manifest.path):  # (a manifest started again, or another copied in,
        # under the same name: it was "the snapshots of another manifest (/x/m.sqlite, ...), not of /x/m.sqlite")
        raise ForeignSnapshots(f"the Parquet snapshot folder {directory} holds the snapshots of the manifest that was at "
                         f"{manifest.path} before (whose first version is {first.get('label')}), but "
                         + (f"the manifest there now is another one (its first version is {mine['label']})" if mine
                            else "that manifest is no longer there (a new one would start with no version)")
                         + ": it was replaced or started again; its snapshots would overwrite the earlier manifest's "
                         "versions.parquet; no snapshot was written there", where="--parquet / [manifest] parquet",
                         fix="if the earlier manifest is gone for good, move its snapshots aside (mv "
                             f"{shlex.quote(str(directory))} {shlex.quote(str(directory).rstrip('/') + '.old')}) and "
                             "run again; else put that manifest back at this path, or give this one a --parquet "
                             "folder of its own")
    raise ForeignSnapshots(f"the Parquet snapshot folder {directory} holds the snapshots of another manifest "
                     f"({owner.get('manifest') or 'unknown'}, whose first version is {first.get('label')}), not of "
                     f"{manifest.path}: both would write their versions there, each overwriting the other's "
                     "versions.parquet; no snapshot was written there", where="--parquet / [manifest] parquet",
                     fix="give this manifest a --parquet folder of its own (e.g. "
                         f"{shlex.quote(str(Path(directory).parent / (manifest.path.stem + '-snapshots')))}), or remove "
                         "the folder if the other manifest's snapshots are no longer wanted")


def refuse_inside_snapshots(directory: Path) -> None:
    # A folder inside another's snapshots (`--parquet snaps/version=v1`, a path copied from `ls`): a run wrote its
    # snapshots there, nested in a version's snapshot, where neither folder's readers look, and never said so.
    import os

    for above in Path(os.path.abspath(directory)).parents:
        if (above / "versions.parquet").is_file() and any(p.is_dir() for p in above.glob("version=*")):
            raise UsageError(f"the Parquet snapshot folder {directory} lies inside the folder of snapshots {above}: "
                             "snapshots written there would be nested in another folder's, where no reader looks for "
                             "them; nothing was done", where="--parquet / [manifest] parquet",
                             fix=f"give the folder of snapshots itself ({above}) if it is this manifest's, or a folder "
                                 "of its own outside it")


def _claim(manifest: Manifest, directory: Path) -> None:
    """Name the folder's manifest, unless the owner file already does as it would be written."""
    first = _first_version(manifest)
    if first is None:
        return
    import os

    claim = {"first_version": first, "manifest_id": _manifest_id(manifest), "manifest": os.path.abspath(manifest.path)}
    try:
        if json.loads((directory / OWNER_FILE).read_text("utf-8")) == claim:
            return
        unclaimed = False
    except FileNotFoundError:
        unclaimed = True
    except (OSError, ValueError):
        unclaimed = False  # (damaged, as check_owner read it: written again)
    private_folder(directory)
    pause("snapshot-claim")  # (tests: another manifest's first run claims the folder meanwhile)
    if not unclaimed:  # this manifest's own claim (an earlier release's, or the same one in other words)
        write_private(directory / OWNER_FILE, json.dumps(claim).encode())
        return
    # An unclaimed folder is taken only where no claim appeared since it was read: two first runs of two manifests
    # given one folder at once each found it unclaimed, each wrote its claim over the other's, and both wrote their
    # snapshots into it (the last claim's manifest then owned the other's versions, and its versions.parquet)
    try:
        write_private(directory / OWNER_FILE, json.dumps(claim).encode(), new_only=True)
    except FileExistsError:
        check_owner(manifest, directory)  # the claim made meanwhile is another manifest's: refused, as it says


def write_missing_snapshots(manifest: Manifest, directory: str, new_label: str | None) -> list[str]:
    """Write the snapshot of the version just committed (`new_label`) and of every version whose snapshot is
    missing or incomplete (a run killed after its commit, snapshots switched on after some versions, an older
    release's types); returns the labels written. Refused (check_owner) for a folder of another manifest's."""
    check_owner(manifest, directory)
    # Named before any snapshot is written, and by every run whose folder does not name it yet: named only after a run
    # wrote snapshots, a run that failed to name it (a full disk, a kill after its snapshots) left it unnamed for good
    # (the next runs wrote no snapshot), and another manifest's run took it, overwrote its versions.parquet and then
    # had the folder refuse its own manifest.
    _claim(manifest, Path(directory))
    written = []
    versions = manifest.versions()
    for version in versions.iter_rows(named=True):
        if version["label"] == new_label or not has_snapshot(version["label"], directory, version):
            write_snapshots(manifest, version["label"], directory, list_versions=False)
            written.append(version["label"])
    # The versions listed once every snapshot is whole: listed after the first one backfilled, the versions not yet
    # written were versions a reader found listed without a snapshot (their folders removed, it takes it). Written
    # again when it no longer lists the manifest's versions (cut or replaced by hand: every reader question reads it).
    # And when the manifest's commit times were edited by hand (or set back) since it was written: it says which.
    if (written or _listed_labels(directory) != versions["label"].to_list()
            or listed_edited_times(directory) != manifest.edited_version_times()):
        _list_versions(manifest, Path(directory))
    return written


# The partition column's type for every reader of the folder. Its value is a version label, text ('001', '20261127030000',
# 'v1.0'), but a reader of hive partitions infers a type from the values it finds: polars read '001' as the number 1
# and DuckDB read the default labels as BIGINT, which neither compared nor joined with the labels `versions`,
# versions.parquet and the parts' own columns hold; and a folder's type changed from a number to text the night a
# hand-made label (`run --version`) came in.
LABEL_HIVE_SCHEMA = {"version": pl.String}


def scan_snapshots(folder: str | Path, part: str = "manifest") -> pl.LazyFrame:
    """Every version's `part` (manifest, changes, registry, scan_errors or findings) of a `run --parquet` folder as
    one polars LazyFrame, with the column `version`: the version's label, as text. Only the snapshots a reader takes
    (`open_manifest(folder)`: whole, of a version of the manifest); a version whose snapshot has no such part (written
    by an older release) gives no rows."""
    from ..review import open_manifest

    schemas = part_schemas()
    if part not in schemas:
        raise UsageError(f"no snapshot part {part!r}", where="scan_snapshots(folder, part)",
                         fix=f"give one of {', '.join(SNAPSHOT_PARTS)}")
    reader = open_manifest(folder)  # (a path as open_manifest takes it: '~', relative; nothing there is said)
    if not isinstance(reader, ParquetReader):
        raise UsageError(f"{reader.path} is a manifest file, not a folder of Parquet snapshots",
                         where="scan_snapshots(folder)", fix="give the folder given to `chorus-batch run --parquet`, or "
                                                             "read the manifest with open_manifest(path)")
    files = [str(path) for label in reader._labels if (path := reader._part(label, part)).is_file()]
    if not files:
        return pl.LazyFrame(schema={**schemas[part], **LABEL_HIVE_SCHEMA})
    return pl.scan_parquet(files, hive_partitioning=True, hive_schema=LABEL_HIVE_SCHEMA)


class ParquetReader(ManifestReader):
    """DIR/version=<label>/{manifest,changes,registry,scan_errors}.parquet and DIR/versions.parquet."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # A version whose manifest.parquet is there: it is written last (SNAPSHOT_PARTS), so a run killed while
        # writing a snapshot, or still writing it, leaves a version no reader takes for complete.
        self._labels = sorted(p.name.split("=", 1)[1] for p in self.path.glob("version=*")
                              if (p / "manifest.parquet").is_file())
        if not self._labels and self.path.name.startswith("version=") and (self.path / "manifest.parquet").is_file():
            raise UsageError(f"{self.path} is one version's snapshot folder, not the folder of snapshots",
                             where=str(self.path), fix=f"pass the folder holding it, {self.path.parent} (every version "
                                                       "is read from there; --as-of / --version picks one)")
        if not self._labels:
            raise UsageError(f"no Parquet snapshots in {self.path}", where=str(self.path),  # a --db naming no manifest: 2
                             fix="pass the folder given to `chorus-batch run --parquet`, or a manifest file")
        self._labels = self._of_the_manifest(self._labels)
        self._check_whole()

    def _check_whole(self) -> None:
        """Refuse a folder whose snapshots a reader cannot answer from: a version versions.parquet lists whose snapshot
        is not there (its folder or file list removed by hand), or a part that no longer reads as Parquet (cut, or
        replaced), or has other rows than the version (another version's copied over it). Such a folder answered
        wrongly without a word (a version missing from `versions`, `history` saying a replaced file never ended) or
        failed with an internal error of polars or DuckDB at whichever query met the part."""
        listed = self._listed()
        missing = [label for label in listed if label not in self._labels]
        damaged = []
        for label in self._labels:
            expected = listed.get(label)
            target = self.path / f"version={label}"
            if _marked_rows(target) is not None:  # (a few stats: as the run tells a whole snapshot)
                continue
            marked = (target / SNAPSHOT_MARK).exists()  # (written once every part was: none is missing since)
            schemas = part_schemas()
            for name in SNAPSHOT_PARTS:
                part = target / f"{name}.parquet"
                if not part.exists():  # an older release's snapshot lacks some (said when a question needs it); a
                    if marked:  # marked one lost it since: its findings or scan errors read as none at all
                        damaged.append(f"{label}/{name}.parquet (removed)")
                    continue
                # with the manifest's columns and types, as the run checks it: a part saved again from pandas or
                # polars (a column dropped, a size turned to float) was taken, then failed as an internal error of
                # DuckDB at whichever question met it ('Cannot compare values of type VARCHAR and type BIGINT')
                rows = _part_rows(part, schemas.get(name))
                want = None  # (the rows versions.parquet gives: of the files, and of the change set)
                if expected is not None and name == "manifest":
                    want = expected["n_files"]
                elif expected is not None and name == "changes":
                    want = sum(expected[f"n_{kind}"] for kind in ("added", "removed", "replaced", "renamed"))
                if rows is None or (want is not None and rows != want):
                    damaged.append(f"{label}/{name}.parquet")
        if not missing and not damaged:
            return
        said = ([f"the snapshot of version{'s' if len(missing) > 1 else ''} {', '.join(missing[:5])}"
                 + (f" and {len(missing) - 5} more" if len(missing) > 5 else "") + " is not there (versions.parquet lists "
                 + ("them" if len(missing) > 1 else "it") + ")"] if missing else []) + (
                [f"{', '.join(damaged[:5])}" + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
                 + " cannot be read as written (cut, damaged, replaced, saved again with other columns or types, or "
                   "removed since)"] if damaged else [])
        raise ManifestError(f"the Parquet snapshot folder {self.path} is incomplete: {'; '.join(said)}: its answers "
                            "would leave versions out or fail", where=str(self.path),
                            fix="run `chorus-batch run --parquet` with this folder and its manifest: it writes those "
                                "snapshots again from the manifest; or read the manifest itself (--db MANIFEST.sqlite)")

    def _listed(self) -> dict[str, dict | None]:
        """The versions versions.parquet lists, with their counts (none for a table without them)."""
        table = self.path / "versions.parquet"
        if not table.exists():  # (an older release's folder)
            return {}
        try:
            frame = pl.read_parquet(table)
        except Exception as exc:  # noqa: BLE001 - cut or replaced: every reader question reads it
            raise ManifestError(f"the table of versions of the Parquet snapshot folder {self.path} cannot be read "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", where=str(table),
                                fix="run `chorus-batch run --parquet` with this folder and its manifest: it writes it "
                                    "again; or read the manifest itself (--db MANIFEST.sqlite)") from None
        counts = {"n_files", "n_added", "n_removed", "n_replaced", "n_renamed"} <= set(frame.columns)
        return {row["label"]: row if counts else None for row in frame.iter_rows(named=True)}

    def _of_the_manifest(self, labels: list[str]) -> list[str]:
        """The snapshots of versions the manifest has. versions.parquet (written after every snapshot) lists them; one
        it does not list is a version's whose run was killed before it wrote the table (read: it sorts after every
        listed one), or, sorting before the last listed, a version the manifest no longer has: one committed after
        the backup a manifest was restored from. Such a snapshot was read as a version of the manifest: `versions`
        listed it, and its change set ended rows of the restored manifest that share its file ids (`history` said a
        current file was removed in it). Left out, and said."""
        try:
            listed = set(pl.read_parquet(self.path / "versions.parquet", columns=["label"])["label"].to_list())
        except Exception:  # noqa: BLE001 - none (an older release's folder), or unreadable: every snapshot is read
            return labels
        if not listed:
            return labels
        last = max(listed)
        lost = [label for label in labels if label not in listed and label < last]
        if lost:
            import logging

            logging.getLogger("chorus_batch").warning(
                f"{self.path}: left out {', '.join(f'version={label}' for label in lost[:5])}"
                + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
                + f": snapshot{'s' if len(lost) > 1 else ''} of no version of the manifest (versions.parquet lists "
                  f"the versions up to {last} without {'them' if len(lost) > 1 else 'it'}: versions lost when the "
                  "manifest was restored from a backup); move them out of the folder to keep them apart")
        return [label for label in labels if label in listed or label > last]

    def _refuse_edited_times(self, asked: object) -> None:
        edited = listed_edited_times(self.path)
        if edited:  # (as the manifest refuses it: SQLiteReader._refuse_edited_times)
            raise UsageError(
                f"no version can be found by the time {asked}: the commit times of the manifest's versions were edited "
                f"({'; '.join(edited[:5])}{f'; and {len(edited) - 5} more' if len(edited) > 5 else ''}; as "
                f"versions.parquet of this folder says), so which version was current then cannot be told; nothing "
                "was read", where=str(self.path),
                fix="give a version label instead (labels are not affected; `" + self.versions_command() + "` lists "
                    "them); or set each version's finished_at back in the manifest and run `chorus-batch run "
                    "--parquet` with this folder")

    def _committed_since_open(self, label: str) -> bool:
        # a snapshot whose manifest.parquet is there (written last), named by a label, not a path
        if not label or {"/", "\\", "\0"} & set(label) or label in (".", ".."):
            return False
        try:
            return (self.path / f"version={label}" / "manifest.parquet").is_file()
        except OSError:  # a name too long, for one: no such version
            return False

    def root_locations(self) -> list[str]:
        """The sites versions.parquet records (each version's, as the manifest records them: the absolute POSIX path, or
        a URL, left out as the SQLite reader leaves it out): a path typed absolute under one is read site-relative, as
        the manifest reads it. It knew none, and `history /data/site/OMOP/a.csv` said no such file."""
        versions = self.versions()
        if "site" not in versions.columns:  # (an older release's folder: no versions.parquet)
            return []
        return [site for site in versions["site"].drop_nulls().unique(maintain_order=True).to_list() if "://" not in site]

    def _part(self, label: str, name: str) -> Path:
        return self.path / f"version={label}" / f"{name}.parquet"

    def _read(self, label: str, name: str, schema: dict | None = None) -> pl.DataFrame:
        part = self._part(label, name)
        if not part.is_file():
            if schema is not None:
                return pl.DataFrame(schema=schema)
            raise ManifestError(f"the snapshot of version {label} has no {name}.parquet", where=str(part),
                                fix="snapshots written by an older chorus-batch lack it; open the SQLite manifest instead")
        return pl.read_parquet(part)

    def versions(self) -> pl.DataFrame:
        table = self.path / "versions.parquet"
        if table.is_file():
            # Every complete snapshot, also one versions.parquet does not list (a run killed after writing the
            # snapshot, before versions.parquet: the next run writes it): left out, it was said to be "committed after
            # this reader read the versions", whatever the reader did. Its commit time is unknown: no time selects it.
            frame = pl.read_parquet(table)
            labels = pl.DataFrame({"label": self._labels}, schema={"label": frame.schema["label"]})
            return labels.join(frame, on="label", how="left").select(frame.columns).sort("label")
        return pl.DataFrame({"label": self._labels, "finished_at": [None] * len(self._labels)},
                            schema={"label": pl.String, "finished_at": pl.String})

    def _files_at(self, label: str, modality: str | None, person: str | None) -> pl.DataFrame:
        frame = self._with_ends(self._read(label, "manifest"))
        if modality is not None:
            frame = frame.filter(pl.col("modality") == modality)
        if person is not None:
            frame = frame.filter(pl.col("person_id") == person)
        return frame.sort("srcfile")

    def _with_ends(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Snapshot rows in FILE_SCHEMA, with their ends. A snapshot holds its rows as still valid; the manifest
        says when a later version ended each one, and so must `files --as-of` and `diff` read from the snapshots
        (they said null)."""
        frame = frame.cast(FILE_SCHEMA, strict=False)  # type: ignore[arg-type]
        ends = self._ends
        if ends.height:
            frame = frame.join(ends, on="file_id", how="left").with_columns(
                version_invalid=pl.coalesce("version_invalid", "_ended_in"),
                time_invalid=pl.coalesce("time_invalid", "_ended_at")).drop("_ended_in", "_ended_at")
        return frame

    def _file_slices(self, label: str) -> Iterator[pl.DataFrame]:
        # The snapshot read SLICE_ROWS rows at a time (`duckdb`, the HTML report): a 1M-file snapshot is not
        # read whole. DuckDB streams the Parquet file; pyarrow's iter_batches decodes a whole row group first
        # (polars writes up to 250k rows to one).
        yield pl.DataFrame(schema=FILE_SCHEMA)  # the table's columns and types, even for an empty snapshot
        with private_duckdb({"threads": 1, "memory_limit": "64MB"}) as con:
            batches = con.sql("SELECT * FROM read_parquet($part)",
                              params={"part": str(self._part(label, "manifest"))}).to_arrow_reader(SLICE_ROWS)
            for batch in batches:
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                yield self._with_ends(frame).select(FILE_COLUMNS)

    def _change_slices(self, upto: str) -> Iterator[pl.DataFrame]:
        # One version's change set at a time, each with the columns of them all (an older release's snapshot
        # may lack some), as all_changes' relaxed concatenation gives them.
        parts = [self._part(label, "changes") for label in self._labels if label <= upto]
        parts = [part for part in parts if part.is_file()]
        if not parts:
            yield self.changes(None)  # (which says that the snapshots lack their change sets)
            return
        union = pl.concat([pl.DataFrame(schema=pl.read_parquet_schema(part)) for part in parts], how="diagonal_relaxed")
        for part in parts:
            yield pl.concat([union, pl.read_parquet(part)], how="diagonal_relaxed").select(union.columns)

    @functools.cached_property
    def _ends(self) -> pl.DataFrame:
        """file_id, _ended_in, _ended_at of every row a change set ended (its old_file_id), read from all
        the change sets at once (two columns of each); once per reader, as its versions are fixed when it opens
        (a diff reads two file sets)."""
        # (of this reader's versions only, named one by one: a lost version's change set ends rows that share its file
        # ids, and a folder's other files, a left-out version's or a stray one, are not read at all)
        parts = [str(part) for label in self._labels if (part := self._part(label, "changes")).is_file()]
        schema = {"file_id": pl.Int64, "_ended_in": pl.String}
        if not parts:
            ended = pl.DataFrame(schema=schema)
        else:
            with private_duckdb() as con:
                ended = pl.from_arrow(con.sql(
                    "SELECT old_file_id AS file_id, min(version) AS _ended_in FROM read_parquet($parts, union_by_name = true) "
                    "WHERE old_file_id IS NOT NULL GROUP BY old_file_id", params={"parts": parts}).to_arrow_table())
            assert isinstance(ended, pl.DataFrame)
            ended = ended.cast(schema)  # type: ignore[arg-type]
        finished = self.versions().select(pl.col("label").alias("_ended_in"), pl.col("finished_at").alias("_ended_at"))
        return ended.filter(pl.col("_ended_in").is_in(self._labels)).join(finished, on="_ended_in", how="left")

    def _changed_between(self, older: str, newer: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        # The rows of one snapshot that the other lacks, by file id, found by DuckDB streaming both Parquet files
        # under the review cap (spilling to a scratch folder): only the changed rows come into memory, as the
        # SQLite reader reads them from the change sets. Both snapshots read whole made `diff` and the report's
        # "deleted since" section grow with the site (two polars frames of every file).
        from ..review import REVIEW_MEMORY

        parts = {label: str(self._part(label, "manifest")) for label in (older, newer)}
        for label, part in parts.items():
            if not Path(part).is_file():
                self._read(label, "manifest")  # says which snapshot lacks its file list, as _files_at does
        sides = []
        with private_duckdb({"threads": 1, "memory_limit": REVIEW_MEMORY}) as con:
            for one, other in ((older, newer), (newer, older)):
                table = con.sql("SELECT * FROM read_parquet($one) AS a ANTI JOIN read_parquet($other) AS b USING (file_id)",
                                params={"one": parts[one], "other": parts[other]}).to_arrow_table()
                frame = pl.from_arrow(table)
                assert isinstance(frame, pl.DataFrame)
                sides.append(self._with_ends(frame).sort("srcfile"))
        return sides[0], sides[1]

    def _path_rows(self, srcfile: str, before_file_id: int | None) -> pl.DataFrame:
        with private_duckdb() as con:
            table = con.sql(
                "SELECT DISTINCT ON (file_id) * EXCLUDE (version) FROM read_parquet($parts, hive_partitioning = true, "
                "hive_types = {'version': 'VARCHAR'}, union_by_name = true) "  # (LABEL_HIVE_SCHEMA: ordered as labels)
                # the row's last snapshot: its stat and verification as the manifest holds them (updated in place)
                "WHERE srcfile = $path AND file_id < $before ORDER BY file_id, version DESC",
                # (this reader's versions, named one by one: no other file of the folder is read, as in _ends)
                params={"parts": [str(self._part(label, "manifest")) for label in self._labels], "path": srcfile,
                        "before": before_file_id if before_file_id is not None else 2**62},
            ).to_arrow_table()
        rows = pl.from_arrow(table)
        assert isinstance(rows, pl.DataFrame)
        rows = rows.cast({k: v for k, v in FILE_SCHEMA.items() if k in rows.columns}, strict=False)  # type: ignore[arg-type]
        ids = rows["file_id"].implode()
        changes = pl.concat([self._read(label, "changes") for label in self._labels], how="diagonal_relaxed")
        began = changes.filter(pl.col("file_id").is_in(ids)).select("file_id", "change", "old_srcfile")
        ended = changes.filter(pl.col("old_file_id").is_in(ids)).select(
            pl.col("old_file_id").alias("file_id"), pl.col("change").alias("ended_by"),
            pl.when(pl.col("change") == "renamed").then(pl.col("srcfile")).alias("renamed_to"),
            pl.col("version").alias("_ended_in"))
        # A snapshot holds a row as it was then, still valid: its end comes from the change that ended it.
        finished = self.versions().select(pl.col("label").alias("_ended_in"), pl.col("finished_at").alias("_ended_at"))
        rows = rows.join(began, on="file_id", how="left").join(ended, on="file_id", how="left").join(
            finished, on="_ended_in", how="left").with_columns(
            version_invalid=pl.coalesce("version_invalid", "_ended_in"), time_invalid=pl.coalesce("time_invalid", "_ended_at"))
        missing = [pl.lit(None, dtype).alias(c) for c, dtype in HISTORY_SCHEMA.items() if c not in rows.columns]
        return rows.with_columns(missing).select(list(HISTORY_SCHEMA)).cast(HISTORY_SCHEMA).sort("file_id")  # type: ignore[arg-type]

    def changes(self, version: str | None = None) -> pl.DataFrame:
        return self._read(self.resolve(version), "changes")

    def change_counts(self) -> pl.DataFrame:
        frames = [self.changes(label).select("version", pl.col("modality").fill_null("Other"), "change")
                  for label in self._labels]
        counts = pl.concat(frames).group_by("version", "modality", "change").len("n").cast(CHANGE_COUNTS_SCHEMA)  # type: ignore[arg-type]
        return counts.sort("version", "modality", "change")

    def registry(self) -> pl.DataFrame:
        return self._read(self._labels[-1], "registry")

    def scan_errors(self, version: str | None = None) -> pl.DataFrame:
        return self._read(self.resolve(version), "scan_errors",
                          schema={"srcfile": pl.String, "kind": pl.String, "message": pl.String})

    def _findings(self, label: str) -> pl.DataFrame:
        return self._read(label, "findings", schema=FINDINGS_SCHEMA)
