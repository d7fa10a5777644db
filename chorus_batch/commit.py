"""Commit: from a ScanResult and the previous version to a new version in the manifest.

  the tree now   the scan's files; a file that could not be hashed, or lies under a folder
                 that could not be listed, keeps its previous row (nothing recorded is lost);
                 joined with the previous version one partition at a time (tally: a merge of
                 shards reads each partition alone, partitions.py), keeping only what may have
                 changed and counts of the rest
  diff           added / removed / replaced / renamed, as set operations in DuckDB (diff.py)
  classify       only the files that get a new row (after the diff: unchanged files keep
                 their recorded classification, and the regex captures are not held in
                 memory while DuckDB runs) -- unless the classification itself changed (new
                 patterns in this release or in chorus.toml): then the current rows are
                 classified again and updated in place (derived data, not the site's content)
  write          one SQLite transaction (store), and the state cache for the next run written
                 partition by partition while SQLite commits

A version is written when anything changed, including only the recorded errors.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from .classify import PathPattern, classify, fingerprint
from .diff import Diff, compute_diff
from .config import parse_max_delete
from .exclude import DEFAULT_EXCLUDES
from .errors import MassRemovalRefused, UsageError, raise_lost_stop
from .frames import CLASSIFIED_SCHEMA, MD5_SOURCES, STATE_SCHEMA, columns_of, empty_errors, fmt, under_folders
from .partitions import TreeParts, bucket_range, compact, in_range, with_bucket
from .progress import Progress, log
from .scan import ScanResult
from .store import Manifest, VersionRecord
from .times import iso, utc_now
from .units import named, plural, quoted, shown_name
from .workers import VANISHED_KEPT

LABEL_FORMAT = "%Y%m%d%H%M%S"
# Not ending in '.': the label is the version's folder at the centre, and Azure does not keep a name part ending in '.'
# (the one limit: the pattern, and every message that names the limit, take it from LABEL_MAX; a hand label's is
# HAND_LABEL_MAX, below, from it too)
LABEL_MAX = 64
_LABEL_RE = re.compile(rf"^[A-Za-z0-9](?:[A-Za-z0-9._-]{{0,{LABEL_MAX - 2}}}[A-Za-z0-9_-])?$")
# A device name Windows reserves, in any case and with any extension (as file.unportable_name reads a site's names:
# validate/checks_layout): a version's folder at the centre named so cannot be made on a reviewer's Windows disk.
_DEVICE_LABEL = re.compile(r"(?i)^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\.|$)")
# A hand label leaves room for the "-<UTC start>" the versions after it add (next_label): a 50-character one made the
# next night's label 65 characters, past what a label may have (mark-uploaded refused to name it)
HAND_LABEL_MAX = LABEL_MAX - len("-YYYYMMDDhhmmss")
# Errors under these kinds mean "could not look", not "gone": earlier rows below them are kept.
_UNSEEN_DIR_KINDS = ("unreadable_dir", "vanished_dir")
# A followed link whose target cannot be reached, or is missing (a file system not mounted now): what was recorded at
# or below the link is kept, until the link is removed.
_UNSEEN_LINK_KINDS = ("unreadable_link", "broken_symlink")


@dataclass
class Pending:
    """What a dry run would write, for checking it without writing: the new file rows (classified; root_id the
    position of the scan's root), the file ids they end, kept rows classified anew (file_id + CLASSIFIED_SCHEMA;
    None when the classification did not change), the manifest's root_id of each recorded root (by position), and
    the kept files whose stat, etag or root the scan found moved (current_tree's `touched`: file_id, mtime_ns, root_id
    as the scan's position, verified_ns, etag, md5, md5_source), which a run records (_touch) before its check reads
    them."""

    new_rows: pl.DataFrame
    invalidated: pl.Series
    reclassified: pl.DataFrame | None
    root_ids: dict[int, int]
    touched: pl.DataFrame


@dataclass
class Committed:
    label: str | None  # the version written; None when nothing changed (or a dry run)
    counts: dict[str, int]
    by_modality: pl.DataFrame  # modality, change, n
    errors: pl.DataFrame
    n_files: int
    total_bytes: int
    verification: dict = field(default_factory=dict)  # rolling re-verification: this run, and the site's state
    md5_sources: dict = field(default_factory=dict)  # how this run obtained each listed file's MD5 (MD5_SOURCES)
    pending: Pending | None = None  # a dry run: what it would write (for validation)
    # where `errors` were written: "scan_errors" (this version's), "previous" (the latest version's scan_errors, the
    # same problems), "run_errors" (no version: kept with the run), None (nothing written: a dry run, no runs row)
    errors_in: str | None = None
    # A dry run the --max-delete guard would refuse: why (a run raises it); its changes are still shown, so the
    # user sees the files it would remove before choosing a larger --max-delete
    refused: MassRemovalRefused | None = None
    # The change set when it is held (a dry run, or nothing committed); a committed version's is in its manifest
    _change_set: pl.DataFrame | None = field(default=None, repr=False)
    _changes_in: Path | None = field(default=None, repr=False)

    @property
    def change_set(self) -> pl.DataFrame:
        """Path by path: version, change, srcfile, old_srcfile, file_id, old_file_id and the file's modality,
        person_id, size and md5 (as it is now; a removed file's as it was), sorted by change and srcfile. A
        committed version's is read from its manifest when first asked, not held by the run: a 1M-file first
        run held 114 MiB of it through validation, whose peak it raised by about 150 MiB."""
        if self._change_set is None:
            assert self._changes_in is not None and self.label is not None
            changes = Manifest(self._changes_in).changes(self.label)[1]
            self._change_set = changes.select(*columns_of("changes"), *_DESCRIBED)
        return self._change_set


def read_delete_list(path: str) -> pl.DataFrame:
    """Site-relative paths, one per line; '#' starts a comment. srcfile, the line's number and the line as written.

    A line is taken as written: a space at either end may be part of a name (a name the site holds, though Windows
    cannot), and a leading '/' is an absolute path, not under the site: such lines were stripped, and the messages
    showed the stripped path, not what the user wrote. They are refused, by line number, before anything is
    recorded. A leading './' and '\\' separators (find's and Windows' forms) are unambiguous: read as the path,
    and the messages name the line."""
    from .config_file import read_bytes

    try:
        data = read_bytes(Path(path), "delete list")  # (a named pipe nothing writes to: refused, not waited on)
        # A list written on Windows: with a byte-order mark (Notepad, Excel's "CSV UTF-8"), whose U+FEFF was read as
        # part of the first path (never matched: that file was not removed), or as UTF-16 ("Unicode"): both unambiguous
        text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"the delete list {path} does not exist", where=os.path.abspath(path),
                         fix="pass --delete-list with the file of site-relative paths to remove, one per line"
                             # (`--delete-list -`, as other tools read standard input: said as --config's is)
                             + (" (standard input is --delete-list /dev/stdin)" if str(path) == "-" else "")) from None
    except IsADirectoryError:
        raise UsageError(f"the delete list {path} is a folder, not a file", where=os.path.abspath(path),
                         fix="pass --delete-list with the file of site-relative paths to remove, one per line") from None
    except UnicodeDecodeError as exc:  # (said "in position 19": a byte count, of no use in an editor)
        from .config_file import not_utf8

        said, where = (not_utf8(Path(os.path.abspath(path)), exc) if not exc.encoding.startswith("utf-16") else
                       (f"{os.path.abspath(path)} is UTF-16 text cut short (it ends within a character)",
                        os.path.abspath(path)))
        raise UsageError(f"the delete list {said}; nothing was recorded", where=where,
                         fix="save the list as UTF-8 (or UTF-16 with a byte-order mark, as Windows saves "
                             "\"Unicode\") and run again") from None
    except OSError as exc:
        raise UsageError(f"cannot read the delete list: {exc}", where=os.path.abspath(path),
                         fix="pass --delete-list with a readable UTF-8 file of site-relative paths, one per line") from None
    stripped = pl.col("written").str.strip_chars()
    lines = pl.DataFrame({"written": text.split("\n")}, schema={"written": pl.String}).with_row_index("line", 1).filter(
        (stripped != "") & ~stripped.str.starts_with("#"))
    lines = lines.with_columns(pl.col("written").str.strip_suffix("\r"))  # a Windows line ending
    # A name `files` shows quoted ('OMOP/c.csv ', 'OMOP/new\\nline.csv', 'cafe\\u0301.md'), copied: the name it shows,
    # exactly (no other line starts and ends with a quote: such a name is shown quoted too). A name with a space at
    # its end, or a line break, could not be listed otherwise: no delete list removed it.
    from .units import unshown_name

    lines = lines.with_columns(_name=pl.when(pl.col("written").str.contains(r"^['\"]")).then(pl.col("written"))
                               .map_elements(unshown_name, return_dtype=pl.String))  # (the quoted lines alone)
    srcfile = pl.coalesce("_name", pl.col("written").str.replace_all("\\", "/", literal=True).str.replace(r"^(\./)+", ""))
    lines = lines.with_columns(srcfile=srcfile, why=(
        pl.when(pl.col("_name").is_null() & pl.col("written").str.contains(r"^\s|\s$"))
        .then(pl.lit("starts or ends with a space or tab"))
        # A path copied from the Windows machine's Explorer (C:\data\site\OMOP\a.csv, \\server\share\...): read as
        # site-relative 'C:/data/site/OMOP/a.csv', it was "not in the manifest; ignored" and the file stayed recorded
        .when(pl.col("_name").is_null() & pl.col("written").str.contains(r"^(?:[A-Za-z]:[\\/]|\\\\)"))
        .then(pl.lit("starts with a drive or network share, a Windows absolute path"))
        .when(srcfile.str.starts_with("/")).then(pl.lit("starts with '/', an absolute path"))
        .when(srcfile.str.contains(r"(^|/)\.{1,2}(/|$)|//|/$")).then(pl.lit("has an empty, '.' or '..' part"))))
    bad = lines.filter(pl.col("why").is_not_null())
    if bad.height:
        shown = "; ".join(f"line {n} {quoted(w)}: {why}" for n, w, why in bad.head(5).select("line", "written", "why").rows())
        what = ("is not a site-relative path as the manifest stores it" if bad.height == 1 else
                "are not site-relative paths as the manifest stores them")
        raise UsageError(f"{plural(bad.height, 'line')} of the delete list {what} ({shown})", where=path,
                         fix="write each path as `chorus-batch files` shows it (e.g. OMOP/person.csv): no space or tab "
                             "at either end, no leading '/' nor drive (C:\\): relative to the site's root (a name with a "
                             "space at its end in quotes, as `files` shows it: 'OMOP/a.csv '); nothing was recorded")
    # (the line with its backslashes: a name's own characters where the manifest records it so, see _check_delete_list)
    literal = pl.coalesce("_name", pl.col("written").str.replace(r"^(\./)+", ""))
    return lines.select("srcfile", pl.col("line").cast(pl.Int64), "written", literal=literal).unique(
        "srcfile", keep="first", maintain_order=True)


def next_label(started: datetime, latest: str | None, requested: str | None) -> str:
    """Version labels are the run's UTC start, unique and increasing."""
    if requested is not None:
        if not _LABEL_RE.fullmatch(requested):
            raise UsageError(f"invalid version label {quoted(requested)}", where="--version",
                             fix=f"use up to {HAND_LABEL_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit and not "
                                 "ending in '.' (the version's folder at the central container; Azure does not keep a name "
                                 "part ending in '.'); the default is the UTC start, YYYYMMDDhhmmss")
        if (device := _DEVICE_LABEL.match(requested)) is not None:
            raise UsageError(f"version label {requested!r} is the device name {device.group(1).upper()}, which Windows "
                             "reserves with any extension, in any case: the version's folder at the central container "
                             "(a reviewer's download of it) cannot be made on a Windows disk", where="--version",
                             fix="choose another label, or omit --version to use the UTC start time")
        if len(requested) > HAND_LABEL_MAX:
            raise UsageError(f"version label {requested!r} has {len(requested)} characters: the versions after it are "
                             f"labelled '{requested}-<UTC start>', {LABEL_MAX - HAND_LABEL_MAX} more, past the "
                             f"{LABEL_MAX} a label may have", where="--version",
                             fix=f"use at most {HAND_LABEL_MAX} characters, or omit --version to use the UTC start time")
        if latest is not None and requested <= latest:
            raise UsageError(f"version label {requested!r} does not sort after the latest version {latest!r}",
                             where="--version", fix="choose a later label, or omit --version to use the UTC start time")
        return requested
    label = started.strftime(LABEL_FORMAT)
    if latest is None or label > latest:
        return label
    # After a label chosen by hand (which sorts after any time), "<that label>-<UTC start>": appending "-1" to the
    # latest grew the label by two characters every run ("v6-1-1-1…"), past the 64 a label may have.
    prefix, stamp = latest, None
    if (tail := re.match(r"^(.+)-(\d{14})$", latest)) is not None:
        prefix, stamp = tail.group(1), tail.group(2)
    elif re.fullmatch(r"\d{14}", latest):
        prefix, stamp = "", latest
    if stamp is not None:
        with contextlib.suppress(ValueError):  # (14 digits that are no time: taken as a hand label)
            later = max(label, (datetime.strptime(stamp, LABEL_FORMAT) + timedelta(seconds=1)).strftime(LABEL_FORMAT))
            return f"{prefix}-{later}" if prefix else later
    if len(latest) > HAND_LABEL_MAX:  # (a label given before hand labels were kept short, or imported)
        raise UsageError(f"the latest version's label {latest!r} has {len(latest)} characters: the next one, "
                         f"'{latest}-<UTC start>', would be past the {LABEL_MAX} a label may have", where="--version",
                         fix=f"give this run a label that sorts after {latest!r} with --version (at most "
                             f"{HAND_LABEL_MAX} characters): the versions after that one follow its label")
    return f"{latest}-{label}"


# A clock behind the latest version's by more than this is said (a few seconds are two nodes' usual difference)
CLOCK_BEHIND_S = 60


def _say_clock_behind(manifest: Manifest, started: datetime, label: str) -> None:
    """Warn of a machine whose clock is behind the time the latest version was committed: the version is labelled
    after it (next_label), but its recorded times are earlier, and a time between the two, asked of `files --as-of`,
    finds the versions in commit order, not by the clock (review.resolve). Said so the clock gets mended."""
    latest = manifest.latest_version()
    if not latest or not latest.get("finished_at"):
        return
    with contextlib.suppress(ValueError):
        before = datetime.fromisoformat(str(latest["finished_at"]).replace("Z", "+00:00"))
        if (before - started).total_seconds() > CLOCK_BEHIND_S:
            edited = [said for said in manifest.edited_version_times() if said.startswith(f"{latest['label']} records ")]
            if edited:  # not this machine's clock: the time was edited (it was told to set a right clock right)
                log.warning(f"the commit time of version {latest['label']} was edited by hand ({edited[0]}), not this "
                            f"machine's clock behind: version {label} is recorded "
                            f"with this machine's time ({iso(started)}); a version asked by a time (--as-of TIME) is "
                            "refused until that version's finished_at is set back within its run's times")
                return
            log.warning(f"this machine's clock ({iso(started)}) is behind the time version {latest['label']} was "
                        f"committed ({latest['finished_at']}): version {label} is recorded with the earlier times, "
                        "and times asked of --as-of between the two read in commit order; set the clock right (NTP: "
                        "`timedatectl status`, `chronyc tracking`)")


def commit(manifest: Manifest, scanned: ScanResult, previous: pl.DataFrame | TreeParts, *, previous_label: str | None,
           patterns: tuple[PathPattern, ...], mode: str = "full", delete_list: pl.DataFrame | None = None,
           started: datetime | None = None, finished: datetime | None = None, version_label: str | None = None, site: str = "",
           run_id: int | None = None, threads: int = 2, dry_run: bool = False,
           progress: Progress | None = None, max_delete: str | int = "50%",
           spill_parent: str | Path | None = None, keep_scan: bool = True) -> Committed:
    """Turn `scanned` into the next version after `previous_label`. `previous` holds its current rows (with
    the scan's files: scanned.files), or both in partitions (TreeParts: a merge of shards reads them one
    partition at a time, so what is held whole is what changed, not the site). The diff's DuckDB spills
    into a private folder in `spill_parent` (default: the system's temporary folder). `started` and
    `finished` (default: now) are the version's times (an import gives those of the run it replays).
    `keep_scan=False`: scanned.files is let go (emptied) as soon as it is compared with `previous`."""
    parts = previous if isinstance(previous, TreeParts) else TreeParts.whole(previous, scanned.files)
    if mode == "full" and not scanned.coverage.whole:
        raise UsageError(
            f"this scan covers {scanned.coverage}, not the whole site: committed in full mode it would mark every "
            "file outside it as removed", where="commit",
            fix="merge the results of all shards first (chorus_batch.scan.merge_scans), or commit in append mode")
    # previous_label is the caller's word (a script keeps `latest` from when it scanned, or takes the scan's own
    # based_on): checked against the manifest, or a stale scan was committed after an older version, undoing the
    # versions since (their changes recorded as replaced back) under a label checked against the wrong latest.
    recorded = manifest.latest_version()
    recorded_label = recorded and recorded["label"]
    if previous_label != recorded_label:
        raise UsageError(
            f"previous_label is {previous_label or '(none)'}, but the latest version of {manifest.path} is "
            f"{recorded_label or '(none)'}: nothing was committed", where="commit",
            fix="pass previous_label=manifest.latest_version()['label'] and previous=manifest.previous_state(), "
                "and scan again against that version if the scan was based on another")
    if scanned.based_on != previous_label:
        raise UsageError(
            f"this scan reused the MD5s of version {scanned.based_on or '(none)'}, but the latest version is "
            f"{previous_label or '(none)'}", where="commit", fix="scan again against the latest version")
    started = started or utc_now()
    delete_errors = empty_errors()
    if delete_list is not None:
        delete_list, delete_errors = _check_delete_list(delete_list, parts, manifest.removed_in)
    unseen_dirs = scanned.errors.filter(pl.col("kind").is_in(_UNSEEN_DIR_KINDS))["srcfile"].to_list()
    # a followed link whose target could not be reached may lead to a folder: the rows below it are kept too
    unseen_dirs += [p + "/" for p in scanned.errors.filter(pl.col("kind").is_in(_UNSEEN_LINK_KINDS))["srcfile"].to_list()]
    unseen_dirs += stale_listings(scanned.errors)
    root_ids = manifest.known_root_ids(scanned.roots)
    tree = tally(parts, unseen_dirs if mode == "full" else [], root_ids, unseen_files(scanned.errors),
                 verified_ns=scanned.scan_started_ns, threads=threads)
    if not keep_scan and not isinstance(previous, TreeParts):
        # Compared: not held through the diff, the commit and validation (1M files: ~130 MB)
        scanned.files = scanned.files.clear()
        parts = TreeParts.whole(previous, scanned.files)
    previous_candidates = pl.concat(tree.previous_candidates)
    current_candidates = pl.concat(tree.current_candidates)
    touched = pl.concat(tree.touched)
    tree.previous_candidates = tree.current_candidates = tree.touched = []

    diff = compute_diff(previous_candidates, current_candidates, mode=mode, delete_list=delete_list, threads=threads,
                        spill_parent=spill_parent)
    diff = Diff(diff.change_set, diff.n_unchanged + tree.n_unchanged)
    counts = diff.counts()
    # A root that listed nothing is compared with the previous version's roots by folder, not by root_id alone: an
    # older release recorded one folder twice (through a symlink), and the previous files may lie under the other.
    silent = tree.n_previous and set(range(len(scanned.roots))) - tree.listed_roots
    same = manifest.same_root_ids(scanned.roots) if silent else {}
    # Listed, but no file that is tracked (an object named with '//', '.' or '..' an earlier release tracked; a file
    # now a FIFO): removed by a rule, not gone from the site, so not what --max-delete guards against (an unmounted
    # site), and said so on its scan error (it said only "not tracked", and the refusal "check the site is mounted").
    left_out = (diff.change_set.filter(pl.col("change") == "removed")
                .join(scanned.errors.filter(pl.col("kind") == "special_file").select("srcfile"), on="srcfile", how="semi")
                ["srcfile"].unique())
    if counts["removed"] and scanned.exclude_patterns:  # recorded files a glob now leaves out: said as such
        from .exclude import matched_by, note_removed

        note_removed(scanned.excluded, diff.change_set.filter(
            (pl.col("change") == "removed") & matched_by(pl.col("srcfile"), scanned.exclude_patterns))["srcfile"])
    dropped = _dropped_roots(manifest, tree, scanned.roots, root_ids, diff.change_set, previous_candidates) \
        if mode == "full" and counts["removed"] else []
    refused = None
    try:
        guard_removals(tree, scanned.roots, counts["removed"] - left_out.len(), root_ids, max_delete=max_delete,
                       mode=mode, same_roots=same, dropped=dropped,
                       excluded_removed=int(scanned.excluded.get("removed", 0)), n_excluded=scanned.n_excluded,
                       unseen=bool(unseen_dirs), user_excluded=int(scanned.excluded.get("user", 0)))
    except MassRemovalRefused as exc:
        if not dry_run:
            raise
        refused = exc

    new_rows = diff.change_set.filter(pl.col("change").is_in(["added", "replaced", "renamed"])).select("change", "srcfile").join(
        current_candidates.drop("unchanged_modality", "unchanged_id"), on="srcfile", how="left", maintain_order="left")
    del current_candidates
    by_position = {i: modality for i, (_, modality) in enumerate(scanned.roots) if modality is not None}
    classified = _check_modality_roots(classify(new_rows.select("root_id", "srcfile"), patterns), by_position)
    new_rows = new_rows.hstack(classified.drop("root_id", "srcfile"))
    del classified
    invalidated = diff.change_set.filter(pl.col("change").is_in(["removed", "replaced", "renamed"]))["old_file_id"]

    kept_candidates = previous_candidates.filter(~pl.col("file_id").is_in(invalidated.implode()))
    n_kept = tree.n_previous - invalidated.len()
    classification = fingerprint(patterns)
    reclassified = None
    if n_kept and manifest.classification() != classification:
        reclassified = _reclassify(manifest, invalidated, patterns)
        kept_candidates = _with_classification(kept_candidates, reclassified)
        if reclassified.height:  # (an upgrade's new unparseable paths of unchanged files are otherwise unexplained)
            log.info(f"the classification changed since the manifest's current rows were classified (another "
                     f"release, or [patterns] of chorus.toml): {plural(reclassified.height, 'unchanged file')} {'is' if reclassified.height == 1 else 'are'} classified "
                     "otherwise now, " + ("which a run updates in place" if dry_run else
                                          "updated in place (their contents and the versions stay as recorded)"))
    unchanged = tree.unchanged_by_modality()
    if mode == "append" and kept_candidates.height:
        # Files the tree did not list are carried over as they were: unchanged, or the summary's counts fall short
        # of the version's files (unchanged 1 of a version of 4, 2 of them kept without being listed)
        counts["unchanged"] += kept_candidates.height
        unchanged = pl.concat([unchanged, kept_candidates.group_by(pl.col("modality").fill_null("Other")).len("n")],
                              how="vertical_relaxed").group_by("modality").agg(pl.col("n").sum())
    kept_errors = tree.kept_parse_errors()
    if reclassified is not None:  # the kept rows' parse errors as they are classified now
        kept_errors = pl.concat([kept_errors.join(reclassified.select("file_id"), on="file_id", how="anti"),
                                 reclassified.filter(pl.col("parse_error").is_not_null()).select("file_id", "srcfile", "parse_error")])
    parse_errors = [
        rows.filter(pl.col("parse_error").is_not_null()).select("srcfile", kind=pl.lit("unparseable"), message=pl.col("parse_error"))
        for rows in (kept_errors, kept_candidates, new_rows)
    ]
    was_tracked = (pl.col("kind") == "special_file") & pl.col("srcfile").is_in(left_out.implode())
    said = scanned.errors.with_columns(pl.when(was_tracked).then(pl.col("message") + pl.lit(
        "; the previous version tracked it: recorded as removed in this version (not counted against --max-delete); "
        "renamed, it is tracked again under its new name")).otherwise(pl.col("message")).alias("message"))
    said = _links_not_followed_said(said, diff.change_set)
    said = _unrecorded_said(said, parts)
    errors = pl.concat([said, delete_errors, *parse_errors, *tree.silent_changes,
                        *tree.unverifiable]).unique().sort("srcfile", "kind", "message")
    n_files = n_kept + new_rows.height
    total_bytes = tree.kept_bytes + int(kept_candidates["size"].sum() or 0) + int(new_rows["size"].sum() or 0)
    by_modality = _by_modality(diff.change_set, new_rows, previous_candidates, unchanged)
    outcome = Committed(label=None, counts=counts, by_modality=by_modality, errors=errors,
                        n_files=n_files, total_bytes=total_bytes,
                        verification=verification(tree, scanned.scan_started_ns, kept_candidates, new_rows),
                        md5_sources=tree.md5_sources, refused=refused)
    if dry_run or diff.is_empty:  # nothing committed: the change set is the run's to show
        outcome._change_set = described(diff.change_set, new_rows, previous_candidates)
    del previous_candidates, kept_candidates
    if dry_run:
        outcome.pending = Pending(new_rows=new_rows, invalidated=invalidated, reclassified=reclassified,
                                  root_ids=root_ids, touched=touched)
        return outcome
    if reclassified is not None:  # rows this version ends keep the classification they were recorded with
        reclassified = reclassified.filter(~pl.col("file_id").is_in(invalidated.implode()))

    if not diff.is_empty:
        label = next_label(started, previous_label, version_label)
        _say_clock_behind(manifest, started, label)
        if progress is not None:
            progress.stage(f"committing version {label}")
        raise_lost_stop()  # the last moment a stop can leave the previous version as it was
        record = VersionRecord(
            label=label, started_at=iso(started), finished_at=iso(finished or utc_now()), mode=mode, site=site, counts=counts,
            n_errors=errors.height, n_files=n_files, total_bytes=total_bytes, run_id=run_id,
            scan_started_ns=scanned.scan_started_ns)
        # In the order commit_version writes them (path order), sorted here, not there: its sorted copy came beside
        # this frame, which the commit holds until it returns (1M-file first commit: both held through the ingest).
        # Sorted, the frame is taken as it is there (polars keeps a sorted column's flag: no second sort, no copy).
        new_rows = new_rows.sort("srcfile")
        rows_written = [0]  # source_files rows streamed into SQLite so far (the commit's bulk of work)
        with (progress or Progress(quiet=True)).counter(f"committing version {label}", "row",
                                                         lambda: (rows_written[0], 0), total=(new_rows.height, 0)):
            manifest.commit_version(
                record, new_rows=new_rows, change_set=diff.change_set, invalidated_ids=invalidated, touched=touched,
                errors=errors, roots=scanned.roots, reclassified=reclassified, classification=classification,
                on_rows=lambda n: rows_written.__setitem__(0, rows_written[0] + n),
                on_commit=lambda written: manifest.save_state(  # while SQLite commits
                    new_state(parts, invalidated, reclassified, touched, written.root_ids, written.new_rows),
                    written.generation))  # its new rows let go now: a 1M-file first commit peaked 1.13 -> 1.00 GB
        del new_rows
        outcome.label, outcome._changes_in, outcome.errors_in = label, manifest.path, "scan_errors"
    else:  # no file changed: no version, whatever else did (the run's problems are kept with the run)
        if touched.height or reclassified is not None:
            manifest.refresh_rows(touched, scanned.roots, reclassified=reclassified, classification=classification,
                                  on_commit=lambda written: manifest.save_state(  # while SQLite commits
                                      new_state(parts, invalidated, reclassified, touched, written.root_ids, None),
                                      written.generation))
        if errors.height and errors.equals(manifest.version_errors(previous_label)):
            outcome.errors_in = "previous"
        elif run_id is not None:
            manifest.save_run_errors(run_id, errors)
            outcome.errors_in = "run_errors"
    return outcome



def _links_not_followed_said(errors: pl.DataFrame, change_set: pl.DataFrame) -> pl.DataFrame:
    """A link not followed (`symlink`) at or above paths this version removes says so: after runs that followed links,
    one without --follow-symlinks (a cron line or `status` without the flag) recorded every file reached through a
    link as removed while the link's error said only "not followed", the removals tied to nothing that made them."""
    links = errors.filter(pl.col("kind") == "symlink")["srcfile"]
    removed = change_set.filter(pl.col("change") == "removed")["srcfile"]
    if links.is_empty() or removed.is_empty():
        return errors
    wanted = set(links.to_list())
    at: set[str] = set()
    under: dict[str, int] = {}
    for path in removed.to_list():  # each removed path's own and its folders' paths (a few each)
        if path in wanted:
            at.add(path)
        cut = path.find("/")
        while cut != -1:
            if path[:cut] in wanted:
                under[path[:cut]] = under.get(path[:cut], 0) + 1
            cut = path.find("/", cut + 1)
    if not at and not under:
        return errors

    def told(link: str) -> str:
        if link in at:
            return "; the previous version recorded a file at its path: recorded as removed in this version (--follow-symlinks keeps it)"
        n = under.get(link)
        if n:
            return (f"; the previous version recorded {plural(n, 'file')} under it: recorded as removed in this version "
                    f"(--follow-symlinks keeps {'it' if n == 1 else 'them'})")
        return ""

    suffix = {link: told(link) for link in at | set(under)}
    return errors.with_columns(pl.when(pl.col("kind") == "symlink").then(
        pl.col("message") + pl.col("srcfile").replace_strict(suffix, default="", return_dtype=pl.String))
        .otherwise(pl.col("message")).alias("message"))

@dataclass
class Tally:
    """What a commit needs of the whole tree, gathered one partition at a time (tally): the rows the diff must
    see (the candidates: all but what current_tree found unchanged), and counts of the rest."""

    previous_candidates: list[pl.DataFrame] = field(default_factory=list)  # STATE_SCHEMA rows not found unchanged
    current_candidates: list[pl.DataFrame] = field(default_factory=list)  # current_tree rows not found unchanged
    touched: list[pl.DataFrame] = field(default_factory=list)  # current_tree's touched files
    n_previous: int = 0
    n_unchanged: int = 0
    kept_bytes: int = 0  # the size of the previous rows found unchanged (kept, whatever the diff says)
    held_by_root: dict = field(default_factory=dict)  # root_id -> how many previous rows are under it
    unrooted: bool = False  # some previous rows have no root recorded (written by an older release)
    listed_roots: set = field(default_factory=set)  # scan positions of the roots that listed files
    unchanged: list[pl.DataFrame] = field(default_factory=list)  # modality, n
    parse_errors: list[pl.DataFrame] = field(default_factory=list)  # file_id, srcfile, parse_error of kept rows
    silent_changes: list[pl.DataFrame] = field(default_factory=list)  # ERRORS_SCHEMA
    unverifiable: list[pl.DataFrame] = field(default_factory=list)  # ERRORS_SCHEMA
    md5_sources: dict = field(default_factory=lambda: dict.fromkeys(MD5_SOURCES, 0))
    # files, bytes read again though unchanged (by size and mtime, or etag), and how many of them were found changed
    reverified: list[int] = field(default_factory=lambda: [0, 0, 0])
    # of the kept rows found unchanged: how many, how many read in the last 30 days, never read, the oldest read
    verified: list[int | None] = field(default_factory=lambda: [0, 0, 0, None])

    @property
    def held_roots(self) -> set:
        """root_ids the previous rows are under."""
        return set(self.held_by_root)

    def add(self, other: "Tally") -> None:
        """Count `other` (another partition's tally) in."""
        for name in ("previous_candidates", "current_candidates", "touched", "unchanged", "parse_errors",
                     "silent_changes", "unverifiable"):
            getattr(self, name).extend(getattr(other, name))
        self.n_previous += other.n_previous
        self.n_unchanged += other.n_unchanged
        self.kept_bytes += other.kept_bytes
        for root_id, n in other.held_by_root.items():
            self.held_by_root[root_id] = self.held_by_root.get(root_id, 0) + n
        self.listed_roots |= other.listed_roots
        self.unrooted = self.unrooted or other.unrooted
        for name, n in other.md5_sources.items():
            self.md5_sources[name] = self.md5_sources.get(name, 0) + n  # (an import counts "imported" too)
        self.reverified = [a + b for a, b in zip(self.reverified, other.reverified)]
        self.verified = _sum_verified(self.verified, other.verified)

    def kept_parse_errors(self) -> pl.DataFrame:
        return pl.concat(self.parse_errors) if self.parse_errors else pl.DataFrame(
            schema={"file_id": pl.Int64, "srcfile": pl.String, "parse_error": pl.String})

    def unchanged_by_modality(self) -> pl.DataFrame:
        return pl.concat(self.unchanged).group_by("modality").agg(pl.col("n").sum())


def tally(parts: TreeParts, unseen_dirs: list[str], root_ids: dict[int, int], unseen: list[str],
          verified_ns: int, threads: int = 1) -> Tally:
    """The tree now against the previous version, partition by partition (current_tree), `threads` partitions
    at a time (polars releases the GIL; a 10M-row merge's 20 partitions take about 1.6 cores one at a time)."""
    def one(part: int) -> Tally:
        return _tally_part(parts, part, unseen_dirs, root_ids, unseen, verified_ns)

    tree = Tally()
    if parts.count == 1 or threads <= 1:
        for part in range(parts.count):
            tree.add(one(part))
        return tree
    with ThreadPoolExecutor(min(threads, parts.count), thread_name_prefix="chorus-tally") as pool:
        for piece in pool.map(one, range(parts.count)):  # in partition order
            tree.add(piece)
    return tree


def _tally_part(parts: TreeParts, part: int, unseen_dirs: list[str], root_ids: dict[int, int], unseen: list[str],
                verified_ns: int) -> Tally:
    files = parts.files(part)
    previous = parts.previous(part).select(list(STATE_SCHEMA))
    current, touched = current_tree(files, previous, unseen_dirs, root_ids, unseen, verified_ns=verified_ns)
    previous_candidates, current_candidates, n_unchanged = diff_candidates(previous, current)
    # Only the columns read of the kept rows: made whole, a 1M-file run's tally held a copy of every column of the
    # site twice (~250 MB). Eager, one join: lazily, each use joined again, and a 10M-row merge took 16 -> 22 s.
    kept = previous.select("file_id", "srcfile", "size", "verified_ns", "parse_error").join(
        previous_candidates.select("file_id"), on="file_id", how="anti")
    # What is kept of each partition is compacted, or it would keep the whole partition in memory.
    held = compact if parts.count > 1 else (lambda frame: frame)
    reverified = files.filter(pl.col("verify") & pl.col("read"))
    # The files re-verified beside their recorded MD5, once for both uses (each a join with the whole partition)
    verified = _beside_recorded_md5(files.filter(pl.col("verify")).select("srcfile", "md5", "md5_source", "read"), previous)
    # (found changed: an MD5 read that is not the one recorded, as md5_sources counts it `computed`, not reused)
    changed = verified.filter(pl.col("read") & FOUND_CHANGED).height
    when = kept.select("file_id", "verified_ns").join(
        touched.select("file_id", _v="verified_ns"), on="file_id", how="left").select(
        pl.coalesce("_v", "verified_ns").alias("verified_ns"))["verified_ns"]
    return Tally(
        previous_candidates=[held(previous_candidates)], current_candidates=[held(current_candidates)],
        touched=[held(touched)], n_previous=previous.height, n_unchanged=n_unchanged,
        kept_bytes=int(kept["size"].sum() or 0),
        held_by_root=dict(previous["root_id"].drop_nulls().value_counts().iter_rows()),
        unrooted=previous["root_id"].null_count() > 0,
        listed_roots=set(files["root_id"].unique().to_list()),
        unchanged=[current.group_by(modality="unchanged_modality").len("n").drop_nulls("modality")],
        parse_errors=[held(kept.filter(pl.col("parse_error").is_not_null()).select("file_id", "srcfile", "parse_error"))],
        silent_changes=[held(silent_changes(files, previous))], unverifiable=[held(unverifiable_files(files))],
        md5_sources=md5_sources(files, previous, verified=verified), reverified=[reverified.height, int(reverified["size"].sum() or 0), changed],
        verified=_verified_tally(when, verified_ns),
    )


_STATE_SLICE_ROWS = 131_072  # rows of the previous version a slice of the state cache's write holds


def new_state(parts: TreeParts, invalidated: pl.Series, reclassified: pl.DataFrame | None, touched: pl.DataFrame,
              root_ids: dict[int, int], new_rows: pl.DataFrame | None) -> Iterator[pl.DataFrame]:
    """The current rows after the commit (STATE_SCHEMA), partition by partition in bucket order (for the state
    cache): the previous rows not ended, with their new stat, root and classification, and the new rows."""
    new = None if new_rows is None else with_bucket(new_rows.select(list(STATE_SCHEMA)))
    for part in range(parts.count):
        previous = with_bucket(parts.previous(part))  # (a run's and a merge's have it: not computed again)
        # A whole site (one partition) in slices of buckets too: each slice's kept rows, their touched copy and
        # the concatenation are a slice's size (1M files, a 5%-mutated run: the state cache's write peaked at
        # 1,134 MiB whole)
        if parts.count == 1:
            slices = max(1, previous.height // _STATE_SLICE_ROWS)
            ranges = [bucket_range(piece, slices) for piece in range(slices)]
        else:
            ranges = [parts.buckets(part)]
        for buckets in ranges:
            kept = previous.filter(in_range(*buckets), ~pl.col("file_id").is_in(invalidated.implode()))
            if reclassified is not None:
                kept = _with_classification(kept, reclassified)
            kept = _touch(kept, touched, root_ids)  # (the untouched copy let go)
            pieces = [kept] if new is None else [kept, new.filter(in_range(*buckets))]
            yield pl.concat(pieces, how="vertical_relaxed")


def diff_candidates(previous: pl.DataFrame, current: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """The rows of `previous` and `current` (current_tree) that may have changed, and how many paths did not. A
    path current_tree found unchanged yields no change and pairs with no rename, so it is counted here and
    never enters DuckDB: the diff of a large site costs what changed, not the site's size."""
    unchanged = current["unchanged_id"].drop_nulls()
    return (previous.filter(~pl.col("file_id").is_in(unchanged.implode())),
            current.filter(pl.col("unchanged_id").is_null()), unchanged.len())


def diff_changed(previous: pl.DataFrame, current: pl.DataFrame, **options) -> Diff:
    """compute_diff of the paths that may have changed (diff_candidates)."""
    previous_candidates, current_candidates, n_unchanged = diff_candidates(previous, current)
    diff = compute_diff(previous_candidates, current_candidates, **options)
    return Diff(diff.change_set, diff.n_unchanged + n_unchanged)


_DESCRIBED = ("modality", "person_id", "size", "md5")


def described(change_set: pl.DataFrame, new_rows: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    """The change set with each path's modality, person, size and MD5: as it is now (added, replaced,
    renamed), or as it was (removed: `previous` holds at least the rows removed)."""
    now = change_set.filter(pl.col("change") != "removed").join(
        new_rows.select("srcfile", *_DESCRIBED), on="srcfile", how="left", maintain_order="left")
    was = change_set.filter(pl.col("change") == "removed").join(
        previous.select(pl.col("file_id").alias("old_file_id"), *_DESCRIBED), on="old_file_id", how="left",
        maintain_order="left")
    return pl.concat([now, was]).sort("change", "srcfile")


def _reclassify(manifest: Manifest, invalidated: pl.Series, patterns: tuple[PathPattern, ...]) -> pl.DataFrame:
    """The current rows, but for `invalidated`, whose classification differs under `patterns`: file_id, srcfile
    + CLASSIFIED_SCHEMA."""
    stored = manifest.current_classification().filter(~pl.col("file_id").is_in(invalidated.implode()))
    by_root = {root_id: modality for root_id, modality in manifest.roots().select("root_id", "modality").iter_rows()
               if modality is not None}
    fresh = _check_modality_roots(classify(stored.select("root_id", "srcfile"), patterns), by_root)
    changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"_{c}")) for c in CLASSIFIED_SCHEMA])
    return (
        stored.select("file_id", "srcfile", *[pl.col(c).alias(f"_{c}") for c in CLASSIFIED_SCHEMA])
        .hstack(fresh.select(list(CLASSIFIED_SCHEMA)))
        .filter(changed)
        .select("file_id", "srcfile", *CLASSIFIED_SCHEMA)
    )


def _with_classification(rows: pl.DataFrame, reclassified: pl.DataFrame) -> pl.DataFrame:
    """`rows` (STATE_SCHEMA) with the modality, person and parse error of those `reclassified`."""
    return rows.join(
        reclassified.select("file_id", _m="modality", _p="person_id", _e="parse_error", _x=pl.lit(True)),
        on="file_id", how="left").with_columns(
        modality=pl.when(pl.col("_x")).then(pl.col("_m")).otherwise(pl.col("modality")),
        person_id=pl.when(pl.col("_x")).then(pl.col("_p")).otherwise(pl.col("person_id")),
        parse_error=pl.when(pl.col("_x")).then(pl.col("_e")).otherwise(pl.col("parse_error")),
    ).drop("_m", "_p", "_e", "_x")


def _touch(rows: pl.DataFrame, touched: pl.DataFrame, root_ids: dict[int, int]) -> pl.DataFrame:
    """`rows` with the stat, root (scan position -> the manifest's root_id) and verification of the touched files."""
    if touched.height == 0:
        return rows
    update = touched.select("file_id", pl.col("mtime_ns").alias("_mtime"),
                            pl.col("root_id").replace_strict(root_ids, return_dtype=pl.Int64).alias("_root"),
                            pl.col("verified_ns").alias("_verified"), pl.col("etag").alias("_etag"),
                            pl.col("md5").alias("_md5"), _hit=pl.lit(True))
    touched_row = pl.col("_hit").fill_null(False)
    # (in the rows' order: a cache's rows stay in bucket order, and its write need not sort them again)
    return rows.join(update, on="file_id", how="left", maintain_order="left").with_columns(
        mtime_ns=pl.coalesce("_mtime", "mtime_ns"), root_id=pl.coalesce("_root", "root_id"),
        verified_ns=pl.coalesce("_verified", "verified_ns"),
        etag=pl.when(touched_row).then(pl.col("_etag")).otherwise(pl.col("etag")),
        md5=pl.coalesce("md5", "_md5"),  # (an unverifiable object's MD5, learned: current_tree)
    ).drop("_mtime", "_root", "_verified", "_etag", "_md5", "_hit")


def _dropped_roots(manifest, tree: Tally, roots: list[tuple[str, str | None]], root_ids: dict[int, int],
                   change_set: pl.DataFrame, previous_candidates: pl.DataFrame) -> list[tuple[str, str | None, int]]:
    """(location, modality, n) of each recorded root this run was not given (a [site.roots] line gone from the
    config, a run with another --config, or none) every one of whose previous files would be removed: its files were
    not looked for, so they are not known to be gone. A root that moved (its files found under the new one), or one
    whose files were partly found elsewhere, is no such root."""
    removed = (change_set.filter(pl.col("change") == "removed").select("srcfile")
               .join(previous_candidates.select("srcfile", "root_id"), on="srcfile")
               .filter(pl.col("root_id").is_not_null() & ~pl.col("root_id").is_in(list(root_ids.values()))))
    if removed.height == 0:
        return []
    given = set(root_ids.values()).union(*manifest.same_root_ids(roots).values())
    recorded = {root_id: (location, modality)
                for root_id, location, modality in manifest.roots().select("root_id", "location", "modality").iter_rows()}
    return [(*recorded[root_id], n) for root_id, n in sorted(removed.group_by("root_id").len("n").iter_rows())
            if root_id not in given and root_id in recorded and n == tree.held_by_root.get(root_id)]


def first_run_refusal(roots: list[tuple[str, str | None]], excluded: dict,
                      max_delete: str | int) -> MassRemovalRefused | None:
    """The refusal of a first run (no version yet) that would record no file, as the command line's `run` and
    `status` give it (pipeline.run(refuse_empty_first=True)): its roots list none (a disk not mounted yet, the wrong
    folder), or the exclusion globs leave out every file listed ('?*' passes the up-front check), or the folder holds
    only what the default list always leaves out (.DS_Store, Thumbs.db: the wrong folder, a site not copied yet), said
    as such, not as globs the user never gave. `excluded`: the run's exclusion counts (exclude.apply). Once a version
    exists the same run is refused by guard_removals (exit 5); a first run ended "no first version was committed"
    with exit 0, which a nightly cron took for a quiet night. None where `max_delete` is `all`, which passes it as it
    passes a root that lists nothing once a version exists. (Not of validate --site's temporary manifest, whose
    empty folder is "nothing to check", nor of a library caller, which reads the result.)"""
    if parse_max_delete(max_delete)[0] == "all":
        return None
    where = [_root_where(location, modality) for location, modality in roots]
    lists = "lists" if len(where) == 1 else "list"
    n_excluded, n_user = int(excluded.get("total", 0)), int(excluded.get("user", 0))
    by_pattern = sorted((excluded.get("by_pattern") or {}).items(), key=lambda item: (-item[1], item[0]))
    # (with the default list on, a glob of it counts its files even where the user gave it too: exclude.apply)
    defaults = ", ".join(f"{shown_name(p)} ({n:,})" for p, n in by_pattern if p in DEFAULT_EXCLUDES)
    leftovers = "the operating-system and editor leftovers of its default exclusion list"
    if n_excluded and not n_user:
        return MassRemovalRefused(
            f"refused: {named('root', where)} {'holds' if len(where) == 1 else 'hold'} only files chorus-batch always "
            f"leaves out, {leftovers} ({plural(n_excluded, 'file', grouped=True)}: {defaults}), so no file would be "
            "recorded, and the manifest holds no version yet; nothing was committed", where=", ".join(where),
            fix="check that the site root is the folder (or container and prefix) that holds OMOP/ and the person "
                "folders, and that it is mounted and complete; then run again (--max-delete all lets such a run end with "
                "nothing to commit)")
    if n_excluded:
        users = [f"{quoted(p)} ({plural(n, 'file', grouped=True)})" for p, n in by_pattern if p not in DEFAULT_EXCLUDES]
        globs = (f"the {named('exclusion glob', users)} and the default list of operating-system and editor leftovers "
                 f"({defaults})" if n_user < n_excluded else "the exclusion globs")
        return MassRemovalRefused(
            f"refused: {globs} leave out every file {named('root', where)} {lists} "
            f"({plural(n_excluded, 'file', grouped=True)} excluded), and the manifest holds no version yet; nothing was committed",
            where="--exclude / exclude in [run]",
            fix="check the exclusion globs (the summary of `chorus-batch status` names what each leaves out), and run "
                "again (--max-delete all lets such a run end with nothing to commit)")
    return MassRemovalRefused(
        f"refused: {named('root', where)} {lists} no files at all, and the manifest holds no version yet; nothing was "
        "committed", where=", ".join(where),
        fix="check that the site root is the folder (or container and prefix) that holds OMOP/ and the person "
            "folders, and that it is mounted and complete; then run again (--max-delete all lets a run on a site with "
            "no file yet end with nothing to commit)")


def _root_where(location: str, modality: str | None) -> str:
    """A root as it was given: a mount point of [site.roots] names the setting that points at it."""
    return location if modality is None else f"{location} ([site.roots] {modality})"


def guard_removals(tree: Tally, roots: list[tuple[str, str | None]], n_removed: int, root_ids: dict[int, int], *,
                   max_delete: str | int, mode: str, same_roots: dict[int, set[int]] | None = None,
                   dropped: list[tuple[str, str | None, int]] | None = None, excluded_removed: int = 0,
                   n_excluded: int = 0, unseen: bool = False, user_excluded: int = 0) -> None:
    """Refuse a version that removes more of the previous version's files than `max_delete` allows, or
    one where a root that held files lists none: an unmounted file system, not a deletion; or one that
    removes every file of a root it was not given (`dropped`: _dropped_roots).
    `same_roots`: every recorded root_id of each root's folder (Manifest.same_root_ids), beside `root_ids`.
    Append mode removes nothing but the delete list, yet a root the previous version holds files under (the site, a
    delivery folder whose files stay) that lists none is the same unmounted disk: it ended "no changes", exit 0, every
    night the disk was missing. Refused there too, unless folders could not be listed (`unseen`: scan errors, exit 1).
    A root no recorded file is under (tonight's own delivery folder, empty) is a night with nothing delivered."""
    kind, limit = parse_max_delete(max_delete)
    if kind == "all" or tree.n_previous == 0:
        return
    # (a root that lists nothing but removes nothing: its folders could not be listed, their files kept, each named
    # with its scan error; refused, it was taken for an unmounted file system and the permissions went unsaid)
    empty = [location for position, (location, _modality) in enumerate(roots)
             if position not in tree.listed_roots and (mode == "full" and n_removed or mode == "append" and not unseen)
             and ((same_roots or {}).get(position, {root_ids.get(position)}) & tree.held_roots
                  or (position == 0 and tree.unrooted))]
    # (append mode: a delivery the globs leave out whole, under a root no recorded file is under, is no night with
    # nothing delivered either: files were delivered, and none would be recorded)
    # (the user's globs: a folder that holds only what the default list leaves out, .DS_Store, delivered nothing)
    wholly_excluded = mode == "append" and not empty and not tree.listed_roots and user_excluded > 0 and not unseen
    if wholly_excluded:
        empty = [location for location, _modality in roots]
    empty_where = [_root_where(location, modality) for location, modality in roots if location in empty]
    allowed = limit if kind == "count" else tree.n_previous * limit / 100
    if not empty and not dropped and n_removed <= allowed:
        return
    def files(n: int) -> str:  # ("1 files" was said of a one-file limit)
        return f"{n:,} file" + ("" if n == 1 else "s")

    share = (f"{n_removed:,} of the previous version's {files(tree.n_previous)} "
             f"({100 * n_removed / tree.n_previous:.1f}%)")
    # what the limit counts, said: `max_delete = 50` is 50 files, not 50%
    limit_text = (files(int(limit)) if kind == "count" else f"{limit:g}% of them, {files(int(allowed))}")
    dropped = [] if empty else (dropped or [])
    dropped_where = [_root_where(location, modality) for location, modality, _n in dropped]
    # the root listed files, and the exclusion globs left every one out (an --exclude '?*' or '[0-9]*' with 'OMOP'):
    # said as a root that lists no files at all, with "check that each root named is mounted", of a root that was
    # (and a share over --max-delete that the globs alone remove was told "check that the site is mounted")
    by_globs = n_excluded > 0 and excluded_removed >= n_removed > 0
    excluded_all = bool(empty) and (by_globs or mode == "append" and n_excluded > 0)
    if excluded_all:
        why = (f"the exclusion globs leave out every file {named('root', empty)} {'lists' if len(empty) == 1 else 'list'} "
               f"({files(n_excluded)} excluded), " + ("so none of them would be recorded" if wholly_excluded else
                                                       "and the previous version had files there"))
    elif empty:
        why = (f"{named('root', empty)} {'lists' if len(empty) == 1 else 'list'} no files at all, though the previous "
               "version had files there")
    elif dropped:
        why = (f"{'a root' if len(dropped) == 1 else 'roots'} the manifest records "
               f"{'is' if len(dropped) == 1 else 'are'} not among this run's roots, and every file the previous version had "
               "there would be removed: " + ", ".join(f"{where} ({files(n)})"
                                                      for where, (_l, _m, n) in zip(dropped_where, dropped)))
    else:
        why = (f"the run would remove {share}, more than --max-delete / max_delete {max_delete} allows "
               f"({limit_text})" + (", each a file the exclusion globs now leave out" if by_globs else ""))
    raise MassRemovalRefused(
        f"refused: {why}; nothing was committed" + (f" (the run would remove {share})" if (empty or dropped) and n_removed
                                                    else ""),
        where="--exclude / exclude in [run]" if excluded_all or (by_globs and not dropped)
        else ", ".join(empty_where or dropped_where) if empty or dropped else "--max-delete / max_delete in [run]",
        # a root that lists nothing passes only `all` (a larger share or count still refused it: the fix said otherwise)
        fix=("check the exclusion globs (the summary of `chorus-batch status` names what each leaves out); "
             + ("if those files are meant to leave the version, run again with --max-delete all" if mode == "full" else
                "if tonight's delivery is meant to be left out whole, run again with --max-delete all")) if excluded_all else
            ("check that each root named is mounted and complete; if all of its files were really removed, run again "
             "with --max-delete all (a larger percentage or number of files does not pass a root that lists nothing)")
            if empty and mode == "full" else
            ("check that each root named is mounted and holds its deliveries; on a night with nothing delivered into a "
             "folder emptied after each delivery, run again with --max-delete all (or deliver each night into a folder "
             "of its own, whose empty nights pass)")
            if empty else
            ("give the run that root again (its [site.roots] line in the chorus.toml the run reads, --config with the "
             "file that has it, or --site); if its files were really all removed, or the root given up, run again "
             "with --max-delete all")
            if dropped else
            ("check the exclusion globs (the summary of `chorus-batch status` names what each leaves out); if those files "
             "are meant to leave the version, run again with --max-delete all") if by_globs else
            ("check that the site is mounted and complete; if the removals are real, run again with "
                          "--max-delete all (or a larger percentage such as 80%, or number of files such as 1000)"))


def silent_changes(files: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    """Files re-verified (read though size and mtime were unchanged) whose bytes no longer have their MD5."""
    prev = previous.select("srcfile", _md5="md5", _size="size", _mtime="mtime_ns", _etag="etag", _read="verified_ns")
    # A cloud object with the etag it had is the same object (any write gives a new etag): if it was never read, the
    # MD5 recorded was the storage's own (Content-MD5 or ETag), and that one is wrong, not the bytes new.
    stored_wrong = pl.col("etag").is_not_null() & (pl.col("etag") == pl.col("_etag")) & pl.col("_read").is_null()
    return (
        files.filter(pl.col("verify") & pl.col("md5").is_not_null()).join(prev, on="srcfile")
        .filter((pl.col("md5") != pl.col("_md5")) & (pl.col("size") == pl.col("_size")) & (pl.col("mtime_ns") == pl.col("_mtime")))
        .select("srcfile", kind=pl.lit("silent_change"), message=pl.when(stored_wrong).then(fmt(
            "the MD5 the storage holds for this object (Content-MD5 or ETag, recorded without reading it: {}) is not "
            "the MD5 of its bytes ({}), though the object was not written since (same etag): the stored MD5 is wrong, "
            "e.g. set by a client or copy tool; found by re-verification; recorded as replaced with the MD5 of its "
            "bytes; correct the object's Content-MD5 (or upload it again with its MD5)", pl.col("_md5"), pl.col("md5")))
            .otherwise(fmt(
            "content changed though size and mtime did not (MD5 {} was {}): found by re-verification; recorded as "
            "replaced; check the storage and the copy that wrote it", pl.col("md5"), pl.col("_md5"))))
    )


_DAY_NS = 86_400 * 10**9


def _verified_tally(when: pl.Series, now: int) -> list:
    """Of the read times `when`: how many, how many in the last 30 days, how many never, the oldest."""
    return [when.len(), int((when >= now - 30 * _DAY_NS).sum()), when.null_count(), when.min()]


def _sum_verified(a: list, b: list) -> list:
    """Two _verified_tally results as one."""
    oldest = [t for t in (a[3], b[3]) if t is not None]
    return [a[0] + b[0], a[1] + b[1], a[2] + b[2], min(oldest) if oldest else None]


def verification(tree: Tally, now: int, kept_candidates: pl.DataFrame, new_rows: pl.DataFrame) -> dict:
    """How much of the site has been read and confirmed, and how long ago (for the summary)."""
    n, recent, never, oldest = _sum_verified(tree.verified, _verified_tally(
        pl.concat([kept_candidates.select("verified_ns"), new_rows.select("verified_ns")])["verified_ns"], now))
    return {
        "files_reverified": tree.reverified[0],
        "bytes_reverified": tree.reverified[1],
        "files_found_changed": tree.reverified[2],  # of files_reverified: their bytes no longer had their MD5
        "share_read_in_30_days": round(float(recent) / n, 4) if n else None,
        "never_verified": never,
        "oldest_verification_days": round((now - oldest) / _DAY_NS, 1) if oldest is not None else None,
    }


# What a file that vanished, changed while hashed or could not be read keeps: "what was recorded of it" was said of a
# new file too (a first run's), and that "the next run records it as removed", which no run does of a file no version
# held. Said of such a file as it is.
_KEPT_SAID = {VANISHED_KEPT: "no version recorded it, nor does this one; moved, the next run records it at its new path",
              "what was recorded of it is kept": "no version recorded it yet, nor does this one"}


def _unrecorded_said(errors: pl.DataFrame, parts: TreeParts) -> pl.DataFrame:
    """`errors` with what the messages of files the previous version did not hold say of their record corrected."""
    said = pl.any_horizontal([pl.col("message").str.contains(phrase, literal=True) for phrase in _KEPT_SAID])
    asked = errors.filter(said).select("srcfile").unique()
    if not asked.height:
        return errors
    held = pl.concat([asked.join(parts.previous(part).select(pl.col("srcfile").cast(pl.String)), on="srcfile",
                                 how="semi") for part in range(parts.count)])["srcfile"]
    message = pl.col("message")
    for phrase, instead in _KEPT_SAID.items():
        message = message.str.replace(phrase, instead, literal=True)
    return errors.with_columns(message=pl.when(said & ~pl.col("srcfile").is_in(held.implode())).then(message)
                               .otherwise(pl.col("message")))


def stale_listings(errors: pl.DataFrame) -> list[str]:
    """The folders whose listing is out of date: each that held a folder gone when entered (`vanished_dir`, said
    of the highest folder gone: walk.gone_from), '' for the site root. A folder renamed aside (EEG -> EEG2) while
    its folder was listed, and back before EEG2 was entered: EEG was not listed, and the version recorded its
    files as removed though they were there at the commit (the next run added them all back). What was recorded
    under such a folder and not listed is kept; a real removal there is recorded by the next run."""
    gone = errors.filter(pl.col("kind") == "vanished_dir").select(pl.col("srcfile").str.strip_suffix("/"))
    return (gone.filter(pl.col("srcfile") != "")  # (the site root itself gone: no folder above it was listed)
            .select(pl.col("srcfile").str.replace(r"[^/]*$", "")).unique()["srcfile"].to_list())


def unseen_files(errors: pl.DataFrame) -> list[str]:
    """Paths listed but not readable (e.g. in a folder that can be read but not searched), or gone between the
    listing of their folder and their stat (a folder renamed aside and back while it was listed: there again at the
    commit, yet the version removed them): not known to be gone; the next run decides."""
    return errors.filter(pl.col("kind").is_in(("unreadable", "vanished", *_UNSEEN_LINK_KINDS)))["srcfile"].to_list()


def _check_delete_list(delete_list: pl.DataFrame, parts: TreeParts,
                       removed_in=None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Append mode: paths to remove. A listed path still in the tree, or unknown to
    the manifest, is recorded and left alone. One an earlier version removed (`removed_in`: Manifest.removed_in)
    is a note, not a finding: a list applied again each night would otherwise exit 1 every night."""
    if "literal" in delete_list.columns:
        # A backslash is a character of a POSIX or S3 name (OMOP/a\\b.csv): read as a Windows separator only, such a
        # recorded file was "not in the manifest" and no list could remove it. The line as written names it where
        # the manifest records it (or the tree holds it); else its backslashes separate.
        odd = delete_list.filter(pl.col("literal") != pl.col("srcfile")).select("literal")
        if odd.height:
            held = pl.concat([odd.join(frame.select(literal=pl.col("srcfile").cast(pl.String)), on="literal", how="semi")
                              for part in range(parts.count) for frame in (parts.previous(part), parts.files(part))])
            delete_list = delete_list.with_columns(srcfile=pl.when(pl.col("literal").is_in(held["literal"].implode()))
                                                   .then(pl.col("literal")).otherwise(pl.col("srcfile")))
        delete_list = delete_list.drop("literal").unique("srcfile", keep="first", maintain_order=True)
    present, known = [], []
    for part in range(parts.count):
        present.append(delete_list.join(parts.files(part).select("srcfile"), on="srcfile", how="semi"))
        known.append(delete_list.join(parts.previous(part).select("srcfile"), on="srcfile", how="semi"))
    present_paths = pl.concat(present)
    unknown = delete_list.join(pl.concat(known), on="srcfile", how="anti")
    if removed_in is not None and unknown.height:
        done = unknown.join(removed_in(unknown["srcfile"]), on="srcfile")
        if done.height:
            unknown = unknown.join(done, on="srcfile", how="anti")
            first = done.sort("line").row(0, named=True)
            log.info(f"delete list: {plural(done.height, 'line')} {'names a file' if done.height == 1 else 'name files'} an earlier version already removed (line "
                     f"{first['line']}, {first['srcfile']}: removed in version {first['version']}); nothing to do for "
                     "them")
    # A line naming a folder (a whole session to remove) is no file of the manifest either, but "not in the
    # manifest" was untrue of it: how many recorded files lie under it, found by binary search of each part's
    # sorted paths ('0' is the character after '/': [folder/, folder0) holds exactly the paths under it).
    unknown = unknown.with_columns(n_under=pl.lit(0, pl.Int64))
    if unknown.height:
        folders = unknown["srcfile"]
        for part in range(parts.count):
            paths = parts.previous(part)["srcfile"].cast(pl.String).sort()
            found = (paths.search_sorted(folders + "0") - paths.search_sorted(folders + "/")).cast(pl.Int64)
            unknown = unknown.with_columns(n_under=pl.col("n_under") + found)
    # A line that names a recorded file in other letter case or Unicode form (a list written on macOS, whose names
    # are decomposed, NFD; or typed on Windows, where case does not matter): "not in the manifest" left the user
    # looking at a path that seemed the same. The recorded spelling is named; only for the few unknown lines.
    unknown = unknown.with_columns(_twin=pl.lit(None, pl.String), _how=pl.lit(None, pl.String))
    if unknown.filter(pl.col("n_under") == 0).height:
        def key(path: pl.Expr) -> pl.Expr:
            return path.str.normalize("NFC").str.to_lowercase()

        asked = unknown.filter(pl.col("n_under") == 0).select("srcfile", _key=key(pl.col("srcfile")))
        twins = pl.concat([parts.previous(part).select(_twin=pl.col("srcfile").cast(pl.String))
                           .with_columns(_key=key(pl.col("_twin"))).join(asked, on="_key", how="semi")
                           for part in range(parts.count)])
        found = (asked.join(twins, on="_key")
                 .group_by("srcfile").agg(pl.col("_twin").sort().first())
                 .with_columns(_how=pl.when(pl.col("srcfile").str.to_lowercase() == pl.col("_twin").str.to_lowercase())
                               .then(pl.lit("letter case")).otherwise(pl.lit("Unicode form (é as one character or as "
                                                                             "e + accent, as macOS writes names)"))))
        unknown = unknown.drop("_twin", "_how").join(found, on="srcfile", how="left")
    # which line it was, and how it was written where that differs (./x, a\\b): what the user can find in the file
    line = fmt("line {}", pl.col("line")) + pl.when(pl.col("written") != pl.col("srcfile")).then(
        fmt(", written {}", pl.col("written"))).otherwise(pl.lit(""))
    errors = pl.concat([
        present_paths.select("srcfile", kind=pl.lit("delete_list"),
                             message=fmt("listed for deletion ({}) but still present in the tree; not removed", line)),
        unknown.select("srcfile", kind=pl.lit("delete_list"), message=pl.when(pl.col("n_under") > 0).then(fmt(
            "listed for deletion ({}) but a folder of {} recorded files, not a file; ignored: list its files instead "
            "(chorus-batch files --path {})", line, pl.col("n_under"), pl.col("srcfile"))).when(
            pl.col("_twin").is_not_null()).then(fmt(
            "listed for deletion ({}) but not in the manifest, which records {}: the same path but for {}; ignored: "
            "write the line as the manifest records it", line, pl.col("_twin"), pl.col("_how"))).otherwise(
            fmt("listed for deletion ({}) but not in the manifest; ignored", line))),
    ])
    return delete_list.join(present_paths, on="srcfile", how="anti"), errors


def current_tree(files: pl.DataFrame, previous: pl.DataFrame, unseen_dirs: list[str],
                 root_ids: dict[int, int], unseen: list[str] | None = None,
                 verified_ns: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The tree now as (root_id, srcfile, size, mtime_ns, md5, verified_ns, md5_source, etag,
    unchanged_modality, unchanged_id: the previous file_id of a path whose content the diff counts as
    unchanged), and the `touched` files whose content is unchanged but whose stat, etag or root
    moved (file_id, mtime_ns, root_id, verified_ns, etag). root_id is the scan's position of the root;
    `root_ids` maps the recorded ones to the manifest's. An unverifiable cloud file is in the tree with
    md5 NULL (it is there, but nothing vouches for its bytes)."""
    prev = previous.select("srcfile", pl.col("file_id").alias("prev_file_id"), pl.col("size").alias("prev_size"),
                           pl.col("mtime_ns").alias("prev_mtime_ns"), pl.col("md5").alias("prev_md5"),
                           pl.col("modality").alias("prev_modality"), pl.col("root_id").alias("prev_root_id"),
                           pl.col("verified_ns").alias("prev_verified_ns"), pl.col("etag").alias("prev_etag"))
    joined = files.join(prev, on="srcfile", how="left")
    # A file that could not be hashed keeps its previous row (nothing recorded is lost);
    # a new one that could not be hashed waits for the next run.
    unverifiable = pl.col("md5_source").eq_missing("unverifiable")
    failed = pl.col("md5").is_null() & ~unverifiable
    current = joined.with_columns(
        md5=pl.when(failed).then(pl.col("prev_md5")).otherwise(pl.col("md5")),
        size=pl.when(failed).then(pl.col("prev_size")).otherwise(pl.col("size")),
        mtime_ns=pl.when(failed).then(pl.col("prev_mtime_ns")).otherwise(pl.col("mtime_ns")),
        etag=pl.when(failed).then(pl.col("prev_etag")).otherwise(pl.col("etag")),
    ).filter(pl.col("md5").is_not_null() | unverifiable).with_columns(
        # when the bytes were last seen to have this MD5: now, if read now (or when an interrupted run read them, for
        # an MD5 taken from its checkpoint: read_ns); else as recorded
        verified_ns=pl.when(pl.col("read")).then(pl.coalesce("read_ns", pl.lit(verified_ns, pl.Int64)))
        .otherwise(pl.col("prev_verified_ns")))
    same = pl.col("md5") == pl.col("prev_md5")
    recorded_root = pl.col("root_id").replace_strict(root_ids, default=None, return_dtype=pl.Int64)
    # The object recorded without an MD5 (unverifiable: --cloud-md5 stored-only), still the same object (etag, size,
    # mtime): unchanged, as diff.py decides it; and when it is hashed now (another policy) its MD5 is learned, not a
    # new content: it was called `replaced` (a new version, its file sent to the centre again as changed).
    same_object = (pl.col("prev_md5").is_null() & pl.col("prev_file_id").is_not_null()
                   & pl.col("etag").eq_missing(pl.col("prev_etag")) & pl.col("size").eq_missing(pl.col("prev_size"))
                   & pl.col("mtime_ns").eq_missing(pl.col("prev_mtime_ns")))
    learned = same_object & pl.col("md5").is_not_null()
    # Same content, new stat or etag (or found under another root), or its MD5 learned: remember it, so these are not
    # hashed again.
    touched = current.filter(
        (same & ((pl.col("mtime_ns") != pl.col("prev_mtime_ns")) | (pl.col("size") != pl.col("prev_size"))
                 | pl.col("etag").ne_missing(pl.col("prev_etag"))
                 | recorded_root.is_null() | pl.col("prev_root_id").is_null() | (recorded_root != pl.col("prev_root_id"))
                 # re-verified or racily clean, read and confirmed: remember when (hashing.due: a racily clean file
                 # is read until a read lies past the racy window of its mtime)
                 | pl.col("read")))
        | learned
    ).select(pl.col("prev_file_id").alias("file_id"), "mtime_ns", "root_id", "verified_ns", "etag", "md5", "md5_source")
    current = current.select("root_id", "srcfile", "size", "mtime_ns", "md5", "verified_ns", "md5_source", "etag",
                             pl.when(same.fill_null(False) | same_object).then(pl.col("prev_modality"))
                             .alias("unchanged_modality"),
                             pl.when(same.fill_null(False) | same_object).then(pl.col("prev_file_id")).alias("unchanged_id"))
    if unseen_dirs or unseen:  # folders that could not be listed, files that could not be stat'ed: kept
        under = pl.col("srcfile").is_in(unseen or []) | under_folders(previous["srcfile"], unseen_dirs)
        kept = previous.filter(under).join(current.select("srcfile"), on="srcfile", how="anti")
        current = pl.concat([current, kept.select(pl.lit(0, pl.Int64).alias("root_id"), "srcfile", "size", "mtime_ns", "md5",
                                                  "verified_ns", pl.lit(None, pl.String).alias("md5_source"), "etag",
                                                  pl.col("modality").alias("unchanged_modality"),
                                                  pl.col("file_id").alias("unchanged_id"))])
    return current, touched


def unverifiable_files(files: pl.DataFrame) -> pl.DataFrame:
    """Cloud files recorded without an MD5 (--cloud-md5 stored-only, none stored): errors, never 'equal'."""
    return files.filter(pl.col("md5_source").eq_missing("unverifiable")).select(
        "srcfile", kind=pl.lit("unverifiable"), message=pl.lit(
            "the storage holds no MD5 for this object and --cloud-md5 stored-only forbids reading it: recorded "
            "without an MD5, so nothing vouches for its bytes; run with --cloud-md5 stored-or-download to hash it"))


# A re-verified file (_beside_recorded_md5) whose MD5 read is not the one recorded: its bytes were found changed. (No
# MD5 read: it vanished or could not be read while re-verified, and its recorded one is kept: confirmed, reused.)
FOUND_CHANGED = pl.col("md5").is_not_null() & ~pl.col("md5").eq_missing(pl.col("_md5"))


def _beside_recorded_md5(rows: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    """`rows` (srcfile, md5, ...) with `_md5`, the MD5 the previous version recorded of each path (FOUND_CHANGED)."""
    recorded = previous.select("srcfile", _md5="md5")
    if rows.height < previous.height // 8:  # (a night's few: the previous rows of their paths first, 4 -> 2 ms of 100k)
        recorded = recorded.join(rows.select("srcfile"), on="srcfile", how="semi")
    return rows.join(recorded, on="srcfile", how="left")


def md5_sources(files: pl.DataFrame, previous: pl.DataFrame, *, verified: pl.DataFrame | None = None) -> dict[str, int]:
    """How this run obtained the MD5 of each listed file (frames.MD5_SOURCES; a re-verified file counts as
    reused when its bytes still have the MD5 recorded: confirmed, not new). One whose bytes were found changed
    (silent_changes; or, in the cloud, written between the listing and the read) is recorded as replaced with the MD5
    it read: `computed`, not reused (the summary counted it "unchanged (reused)" beside its own "replaced")."""
    counts = dict.fromkeys(MD5_SOURCES, 0)
    # (the re-verified ones: a few a night; all with --rehash)
    if verified is None:  # (`verified`: these, when the caller has them)
        verified = _beside_recorded_md5(files.filter(pl.col("verify")).select("srcfile", "md5", "md5_source"), previous)
    confirmed = pl.when(FOUND_CHANGED).then(pl.col("md5_source")).otherwise(pl.lit("reused"))
    listed = pl.concat([files.filter(~pl.col("verify").fill_null(False)).select(s=pl.col("md5_source")),
                        verified.select(s=confirmed)])
    for name, n in listed.drop_nulls().group_by("s").len().iter_rows():
        counts[name] = n
    return counts


def _check_modality_roots(classified: pl.DataFrame, expected: dict[int, str]) -> pl.DataFrame:
    """A file under a modality's own root (root_id -> modality) must classify as that modality."""
    if not expected:
        return classified
    want = pl.col("root_id").replace_strict(expected, default=None, return_dtype=pl.String)
    wrong = want.is_not_null() & (pl.col("modality") != want)
    return classified.with_columns(
        parse_error=pl.when(wrong & pl.col("parse_error").is_null())
        .then(fmt("file under the {} root classifies as {}", want, pl.col("modality")))
        .otherwise(pl.col("parse_error")),
    )


def _by_modality(change_set: pl.DataFrame, new_rows: pl.DataFrame, previous: pl.DataFrame,
                 unchanged: pl.DataFrame) -> pl.DataFrame:
    """Counts per change kind x modality (removed files by their previous modality: `previous` holds at least
    the rows removed; `unchanged` the count of unchanged files per modality, as tally counted them)."""
    gone = change_set.filter(pl.col("change") == "removed").select("change", "old_file_id").join(
        previous.select(pl.col("file_id").alias("old_file_id"), "modality"), on="old_file_id", how="left")
    changed = pl.concat([new_rows.select("change", "modality"), gone.select("change", "modality")]).with_columns(
        pl.col("modality").fill_null("Other")).group_by("modality", "change").len("n")
    unchanged = unchanged.select("modality", change=pl.lit("unchanged"), n=pl.col("n").cast(changed["n"].dtype))
    return pl.concat([changed, unchanged]).sort("modality", "change")
