"""What a run changed, for a person (a table) and for programs (one JSON object); validation findings
and any frame as a plain-text table."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

import polars as pl

from ..frames import SEVERITY_ORDER
from ..units import error_kind, human_bytes, pad, plural, shown, shown_name, shown_text, text_width

if TYPE_CHECKING:
    from ..pipeline import RunResult

_KINDS = ("added", "removed", "replaced", "renamed", "unchanged")


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def summary_dict(result: RunResult) -> dict[str, Any]:
    by_modality: dict[str, dict[str, int]] = {}
    for modality, change, n in result.by_modality.iter_rows():
        by_modality.setdefault(modality, dict.fromkeys(_KINDS, 0))[change] = n
    error_kinds = dict(result.errors.group_by("kind").len().sort("kind").iter_rows()) if result.errors.height else {}
    return {
        "version": result.label,
        "previous_version": result.previous_label,
        "committed": result.label is not None,
        "dry_run": result.dry_run,
        "manifest": result.db,
        "site": result.site,
        "mode": result.mode,
        "counts": result.counts,
        "by_modality": by_modality,
        "errors": {
            "total": result.errors.height,
            "by_kind": error_kinds,
            "examples": result.errors.head(20).to_dicts(),
        },
        "findings": findings_dict(result.findings),
        "findings_since": findings_since(result),
        "files": result.n_files,
        "bytes": result.total_bytes,
        "files_hashed": result.n_hashed,
        "bytes_hashed": result.bytes_hashed,
        "elapsed_s": round(result.elapsed_s, 3),
        "files_per_s": round(_rate(result.n_hashed, result.hash_s), 1),
        "mb_per_s": round(_rate(result.bytes_hashed / 1e6, result.hash_s), 1),
        "excluded": excluded_dict(result.excluded),
        "stage_s": result.timings,
        "verification": result.verification,
        "md5_sources": result.md5_sources,
        "exit_code": int(result.exit_code),
    }


def excluded_dict(excluded: dict | None) -> dict[str, Any]:
    """What the exclusion globs left out: {total, default, user, by_pattern, examples}."""
    excluded = excluded or {}
    return {"total": int(excluded.get("total", 0)), "default": int(excluded.get("default", 0)),
            "user": int(excluded.get("user", 0)), "by_pattern": dict(excluded.get("by_pattern", {})),
            "examples": dict(excluded.get("examples", {})), "unmatched": list(excluded.get("unmatched", [])),
            # of the previous version's files, those the globs now leave out, removed (exclude.note_removed)
            "removed": int(excluded.get("removed", 0)), "removed_examples": list(excluded.get("removed_examples", []))}


def excluded_text(excluded: dict | None, *, committed: bool = True) -> list[str]:
    """`excluded: N files (M by the default OS-junk list, K by --exclude/exclude)`, the counts by pattern and the
    recorded files the globs took out of the version (`committed`: False when nothing is written, a dry run)."""
    d = excluded_dict(excluded)
    lines = [f"excluded: {plural(d['total'], 'file')} ({d['default']} by the default OS-junk list, "
             f"{d['user']} by --exclude/exclude); neither hashed nor recorded"] if d["total"] else []
    for pattern, n in d["by_pattern"].items():
        examples = d["examples"].get(pattern, [])
        lines.append(f"  {pattern}: {n}" + (f"  (e.g. {', '.join(examples[:3])})" if examples else ""))
    if d["removed"]:
        lines.append(f"  {plural(d['removed'], 'file')} of the previous version that the globs now match "
                     f"{('is' if d['removed'] == 1 else 'are') if committed else 'would be'} removed from {'this' if committed else 'the next'} "
                     f"version, like files no longer there (the files themselves are not touched; e.g. "
                     f"{', '.join(shown_name(p) for p in d['removed_examples'][:3])})")
    for pattern in d["unmatched"]:
        lines.append(f"warning: --exclude/exclude {pattern!r} matched no file: globs are case-sensitive; one without "
                     "'/' matches a file or folder name anywhere, one with '/' a path from the site root (scratch/*)")
    return lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def findings_since(result: RunResult) -> dict[str, Any] | None:
    """What the run's version fixed, brought and kept of the previous version's findings (`findings_compared`).
    None where there is nothing to compare (no new version, or either not checked)."""
    before, after = result.findings_before, result.findings
    if before is None or after is None or result.label is None:
        return None
    return findings_compared(before, after, result.previous_label)


def findings_compared(before: pl.DataFrame, after: pl.DataFrame, since: str | None) -> dict[str, Any]:
    """What a version fixed, brought and kept of version `since`'s findings (`before`), a finding being its
    severity, rule and file (its message may name counts that change: 30 person folders, then 29); by severity.
    The run's summary and the HTML report compare so (the report showed no comparison at all)."""
    key = ["severity", "rule", "srcfile"]
    old, new = before.select(key).unique(), after.select(key).unique()
    parts = {"fixed": old.join(new, on=key, how="anti", nulls_equal=True),
             "new": new.join(old, on=key, how="anti", nulls_equal=True),
             "still_open": new.join(old, on=key, how="semi", nulls_equal=True)}
    out: dict[str, Any] = {"since": since}
    for name, frame in parts.items():
        counts = {k: 0 for k in ("error", "warning", "info")}
        counts.update(dict(frame.group_by("severity").len().iter_rows()))
        out[name] = {"total": frame.height, **counts}
    return out


def findings_since_text(since: dict[str, Any], *, grouped: bool = False) -> str:
    """'since version X: fixed 0; new 12 (5 errors, 7 warnings, 0 notes); still open 2 (...)' (`findings_compared`);
    `grouped`: counts with thousands separators, as the HTML report writes every number."""
    def told(part: dict) -> str:
        total = f"{part['total']:,}" if grouped else str(part["total"])
        return (f"{total} ({plural(part['error'], 'error', grouped=grouped)}, "
                f"{plural(part['warning'], 'warning', grouped=grouped)}, {plural(part['info'], 'note', grouped=grouped)})"
                if part["total"] else "0")
    return (f"since version {since['since']}: fixed {told(since['fixed'])}; new {told(since['new'])}; "
            f"still open {told(since['still_open'])}")


def findings_dict(findings: pl.DataFrame | None) -> dict[str, Any] | None:
    """Validation findings: counts by severity and rule, and the first few (None: not validated)."""
    if findings is None:
        return None
    by_severity = {k: 0 for k in ("error", "warning", "info")}
    by_severity.update(dict(findings.group_by("severity").len().iter_rows()))
    by_rule = findings.group_by("severity", "rule").len("n").sort("severity", "rule")
    return {
        "total": findings.height,
        "by_severity": by_severity,
        "by_rule": {f"{sev}:{rule}": n for sev, rule, n in by_rule.iter_rows()},
        "examples": _examples(findings, 20).to_dicts(),
    }


def _examples(findings: pl.DataFrame, n: int | None) -> pl.DataFrame:
    """The `n` findings (None: all) a summary shows, most serious first: each rule's first before any rule's second
    (the first 10 by path were 10 of a rule with thousands, under person folders, and a rule of one finding at
    Metadata/ or OMOP/ was a count without its message), listed by severity and then in their own order (by path)."""
    by_severity = pl.col("severity").replace_strict(SEVERITY_ORDER, default=9)
    ranked = findings.with_row_index("_at").with_columns(_nth=pl.int_range(pl.len()).over("severity", "rule"))
    if n is not None:
        ranked = ranked.sort(by_severity, "_nth", "_at").head(n)
    return ranked.sort(by_severity, "_at").drop("_at", "_nth")


def findings_text(findings: pl.DataFrame | None, *, examples: int | None = 10,
                  more: str = "chorus-batch validate --json lists them all", title: str = "validation") -> list[str]:
    """Counts by severity and rule, then the first `examples` findings (None: all), most serious first."""
    d = findings_dict(findings)
    if d is None or findings is None:
        return []
    s = d["by_severity"]
    lines = [f"{title}: {plural(s['error'], 'error')}, {plural(s['warning'], 'warning')}, {plural(s['info'], 'note')}"
             + (f" ({more})" if d["total"] else "")]
    for key, n in d["by_rule"].items():
        lines.append(f"  {key}: {n}")
    listed = _examples(findings, examples)
    for row in listed.iter_rows(named=True):
        lines.append(f"    {row['severity']}: {shown_name(row['srcfile']) or '(site)'}: {shown_text(row['message'])}")
    if d["total"] > listed.height and listed.height:
        lines.append(f"    ... and {d['total'] - listed.height} more")
    return lines


# A name (a path) wider than this many terminal columns, and than twice the median name of its column, is no
# measure for the column: it overflows its cell, and only its own row's later cells move right.
NAME_OVERFLOW_FROM = 60


def _name_width(widths: list[int]) -> int:
    """The width of a column of names (terminal columns of each): that of the widest name that is not far wider than
    the others. One 200-character path padded every row of `changes` to it, the size and MD5 two screens right."""
    named = sorted(w for w in widths if w)  # (empty cells, as old_srcfile of all but renames, are no measure)
    limit = max(NAME_OVERFLOW_FROM, 2 * named[len(named) // 2]) if named else 0
    return max((w for w in named if w <= limit), default=0)


def _table(rows: list[list[str]], header: list[str], names: frozenset[int] = frozenset()) -> list[str]:
    """The rows under the header, columns aligned; `names`: the columns (indices) of names, which a name far wider
    than the others overflows rather than widens (_name_width)."""
    rows = [[shown(str(c)) for c in r] for r in rows]  # one line per row, whatever a name holds
    # Widths in terminal columns, not characters: a CJK name or an emoji takes two.
    widths = [max(text_width(header[i]), _name_width([text_width(str(r[i])) for r in rows]) if i in names and rows
                  else max((text_width(str(r[i])) for r in rows), default=0)) for i in range(len(header))]
    # Numbers align right, text left.
    right = [i > 0 and all(_is_number(str(r[i])) for r in rows if str(r[i])) for i in range(len(header))]
    fmt = lambda r: "  ".join(pad(str(c), w, right=right[i]) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header).rstrip(), "  ".join("-" * w for w in widths), *(fmt(r).rstrip() for r in rows)]


def summary_text(result: RunResult, *, findings_more: str | None = None) -> str:
    """The run's summary for a person. `findings_more`: what lists every finding (the CLI names the command with the
    run's own manifest and config, to be pasted in any folder); by default `validate --json` of a committed version,
    and, of a dry run (whose findings no version holds), the same command with --json."""
    d = summary_dict(result)
    lines: list[str] = []
    if result.dry_run:
        lines.append(f"dry run: nothing written (manifest {result.db})")
    elif result.label:
        lines.append(f"version {result.label} committed to {result.db}")
    elif result.previous_label is None and result.n_files == 0 and excluded_dict(result.excluded)["total"] \
            and not excluded_dict(result.excluded)["user"]:  # only what the default list leaves out: no glob of the user's
        lines.append(f"the site holds only files chorus-batch always leaves out (operating-system and editor leftovers "
                     f"of its default exclusion list, below), so no first version was committed ({result.db}); check "
                     "that the site root is the folder (or container and prefix) that holds OMOP/ and the person folders")
    elif result.previous_label is None and result.n_files == 0 and excluded_dict(result.excluded)["total"]:
        lines.append(f"every file the site lists was excluded, so no first version was committed ({result.db}); "
                     "check the exclusion globs (--exclude, [run] exclude) below")
    elif result.previous_label is None and result.n_files == 0 and result.errors.height:  # listed, none taken
        lines.append(f"no file the site lists could be recorded ({plural(result.errors.height, 'error')}, below), so "
                     f"no first version was committed ({result.db}); fix what the errors say and run again")
    elif result.previous_label is None and result.n_files == 0:  # a first run that found nothing: a wrong root?
        lines.append(f"the site lists no files, so no first version was committed ({result.db}); check that the site "
                     "root is the folder (or container and prefix) that holds OMOP/ and the person folders")
    else:
        lines.append(f"no changes since version {result.previous_label or '(none)'}; nothing committed ({result.db})")
    rows = [[m, *(str(c[k]) for k in _KINDS)] for m, c in sorted(d["by_modality"].items())]
    if rows:
        totals = ["total", *(str(sum(int(r[i + 1]) for r in rows)) for i in range(len(_KINDS)))]
        lines += [""] + _table(rows + [totals], ["modality", *_KINDS])
    lines += [
        "",
        f"files in manifest: {result.n_files}  ({human_bytes(result.total_bytes)})",
        f"hashed: {plural(result.n_hashed, 'file')}, {human_bytes(result.bytes_hashed)} in {result.hash_s:.2f} s "
        f"({d['files_per_s']:.0f} files/s, {human_bytes(_rate(result.bytes_hashed, result.hash_s))}/s); "
        f"run took {result.elapsed_s:.2f} s",
    ]
    lines += excluded_text(result.excluded, committed=not result.dry_run)
    if result.errors.height:
        def listed(label: str | None) -> str:  # (`changes --json`, named here before, lists changes, not errors)
            report = shlex.join(["chorus-batch", "report", "--db", str(result.db), "--out", "report.html"])  # (anywhere)
            return (f"`{report}` has them by kind, and `open_manifest({str(result.db)!r}).scan_errors({label!r})` "
                    "(chorus_batch.review) lists them all")

        where, more = {  # where they were written (a dry run, or a version's or run's table)
            "scan_errors": (f"recorded in scan_errors with version {result.label}", listed(result.label)),
            "previous": (f"the same as version {result.previous_label}'s, recorded with it in scan_errors",
                         listed(result.previous_label)),
            "run_errors": ("no version was committed: recorded with this run in run_errors", "query run_errors"),
        }.get(result.errors_in or "", ("nothing was written: a run would record them",
                                       "--json lists them all"))  # (the same command: `status` needs its options)
        lines += ["", f"errors: {result.errors.height} ({where})"]
        # Each kind's examples under its own heading (with two kinds or more, all were listed under the last one);
        # 10 in all, shared among the kinds, at least one of each
        by_kind = d["errors"]["by_kind"]
        each = max(1, 10 // max(len(by_kind), 1))
        shown = 0
        for kind, n in by_kind.items():
            lines.append(f"  {error_kind(kind)}: {n}")
            for row in result.errors.filter(pl.col("kind") == kind).head(each).iter_rows(named=True):
                lines.append(f"    {shown_name(row['srcfile'])}: {shown_text(row['message'])}")
                shown += 1
        if result.errors.height > shown:
            lines.append(f"  ... and {result.errors.height - shown} more: {more}")
    sources = result.md5_sources
    if sources and (result.cloud or sources.get("stored") or sources.get("unverifiable")):  # where MD5s came from
        lines.append(f"MD5s: {sources['computed']} read and hashed, {sources['stored']} as stored by the storage, "
                     f"{sources['reused']} unchanged (reused), {sources['unverifiable']} unverifiable (no MD5)")
    v = result.verification
    if v and v.get("share_read_in_30_days") is not None:
        oldest = v["oldest_verification_days"]
        read, changed = v["files_reverified"], v.get("files_found_changed", 0)
        # (a file it found changed was counted among the "unchanged files": one rewritten behind its size and mtime)
        reread = (f"{plural(read, 'file')} ({human_bytes(v['bytes_reverified'])}) this run, {read - changed:,} unchanged "
                  f"and {changed:,} whose bytes did not have the MD5 recorded (recorded replaced)" if changed else
                  f"{plural(read, 'unchanged file')} ({human_bytes(v['bytes_reverified'])}) this run")
        lines.append(
            f"re-verified: {reread}; "
            f"{100 * v['share_read_in_30_days']:.1f}% of the site's files read in the last 30 days"
            + (f", the longest unverified {oldest:g} day{'' if oldest == 1 else 's'} ago" if oldest is not None else "")
            + (f", {v['never_verified']} never read (their MD5 as the storage holds it, or recorded by an older "
               "release)" if v["never_verified"] else ""))
    if result.findings is not None:
        more = findings_more or ("--json lists them all" if result.dry_run else "chorus-batch validate --json lists them all")
        found = findings_text(result.findings, more=more)
        since = findings_since(result)
        if since is not None:  # under the counts: what the site's work since the last version did
            found.insert(1, f"  {findings_since_text(since)}")
        lines += ["", *found]
    return "\n".join(lines)


# A change as `status` and `run --dry-run` show it: what a run would commit, path by path.
CHANGE_COLUMNS = ("change", "srcfile", "old_srcfile", "modality", "person_id", "size", "md5")


def _changes(result: RunResult) -> pl.DataFrame:
    return result.change_set.select(CHANGE_COLUMNS)


def head_text(frame: pl.DataFrame, limit: int | None, more: str, *, total: int | None = None) -> list[str]:
    """The first `limit` rows (None: all) as a table, then how many more there are and how to see them. `total`: how
    many rows there are, where `frame` holds only the first ones (default: its own)."""
    total = frame.height if total is None else total
    if limit is None or total <= limit:
        return [frame_text(frame)]
    # (plural: "... and 1 more rows" was said)
    return [frame_text(frame.head(limit)), f"... and {plural(total - limit, 'more row')} ({total} in all); {more}"]


def changes_text(result: RunResult, *, limit: int | None, more: str) -> str:
    """What a run would change: the counts, then the paths (the first `limit`)."""
    counts = ", ".join(f"{result.counts.get(k, 0)} {k}" for k in _KINDS)
    return "\n".join([f"would change: {counts}", *head_text(_changes(result), limit, more)])


def status_text(result: RunResult, *, limit: int | None,
                unvalidated: str = "validation: not checked (--no-validate)") -> str:
    """`chorus-batch status`: where, the changes path by path, the run's problems and the findings validation
    would give (the first `limit` of each; None: all). `unvalidated`: what is said when validation was not run (the
    caller says why: `status --no-validate`, or a caller that never validates)."""
    # the version the changes are counted from, not the one a run would make (whose label is its start time)
    after = f"changes since its latest version, {result.previous_label}" if result.previous_label else "no version yet"
    lines = [f"{result.site}: what a run would commit to {result.db} ({after}); nothing was written", "",
             changes_text(result, limit=limit, more="--limit N or --all shows more, --csv or --json lists them all")]
    lines += excluded_text(result.excluded, committed=False)
    if result.errors.height:
        lines += ["", f"problems the run would record: {result.errors.height}"]
        lines += [f"    {error_kind(row['kind'])}: {shown_name(row['srcfile'])}: {shown_text(row['message'])}"
                  for row in result.errors.head(limit if limit is not None else result.errors.height).iter_rows(named=True)]
        if limit is not None and result.errors.height > limit:
            lines.append(f"    ... and {result.errors.height - limit} more; --all or --json lists them all")
    if result.findings is not None:
        lines += ["", *findings_text(result.findings, examples=limit, more="--all or --json lists them all")]
    else:
        lines += ["", unvalidated]
    return "\n".join(lines)


def status_dict(result: RunResult) -> dict[str, Any]:
    """The run summary (summary_dict) with every change a run would commit and every finding it would give."""
    refused = result.refused
    return {**summary_dict(result), "changes": _changes(result).to_dicts(),
            "errors_list": result.errors.to_dicts(),  # every problem, as the table lists them (errors: 20 examples)
            "findings_list": result.findings.to_dicts() if result.findings is not None else None,
            # why a run would be refused (--max-delete; exit code 5), its changes listed all the same
            "refused": None if refused is None else {"error": refused.what, "where": refused.where, "fix": refused.fix}}


def status_csv(result: RunResult) -> pl.DataFrame:
    """The rows of `status --csv` (written by report.spreadsheet.csv_text)."""
    return _changes(result)


# Columns of names, shown by shown_name: a name's trailing space or invisible character must not make it look
# like another's (`trail.csv ` and `trail.csv` were two identical lines).
NAME_COLUMNS = frozenset({"srcfile", "old_srcfile", "renamed_to", "person_id", "session_id"})


# The manifest's column names a table for a person heads in words (--csv, --json and the manifest keep the names)
HEADINGS = {"srcfile": "path", "old_srcfile": "renamed from"}


def frame_text(frame: pl.DataFrame) -> str:
    if frame.height == 0:
        return "(none)"
    names = [c in NAME_COLUMNS for c in frame.columns]
    rows = [[shown_name(v) if name else "" if v is None else str(v) for v, name in zip(row, names)]
            for row in frame.iter_rows()]
    return "\n".join(_table(rows, [HEADINGS.get(c, c) for c in frame.columns],
                             frozenset(i for i, name in enumerate(names) if name)))
