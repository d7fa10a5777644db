"""What `import-journal` says: the versions it wrote, the upload marks, what it could not map, and (with --site)
what the next run will commit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..units import plural
from .summary import findings_text, status_dict, status_text

if TYPE_CHECKING:
    from ..upstream.importer import ImportResult

_CHANGES = ("added", "removed", "replaced", "renamed")


def import_text(result: ImportResult) -> str:
    where = f"a temporary copy of {result.db} (removed: --dry-run)" if result.dry_run else result.db
    lines = [f"imported {result.journal} (chorus-upload journal, schema v{result.journal_schema}, "
             f"{plural(result.n_rows, 'row')}) into {where}: {plural(len(result.versions), 'version')}"]
    for version in result.versions:
        counts = ", ".join(f"{version.counts[c]} {c}" for c in _CHANGES if version.counts.get(c))
        runs = f" ({version.updates} update runs)" if version.updates > 1 else ""
        lines.append(f"  {version.label}: {plural(version.n_files, 'file')}; {counts or 'no change'}{runs}")
    for label in result.unchanged_updates:
        lines.append(f"  {label}: no file's content changed (only mtimes, or nothing): no version")
    if result.central:
        lines.append(f"upload marks: {plural(result.n_marks, 'file version')} recorded in the uploads ledger for {result.central} "
                     "as imported (not verified: `chorus-batch verify --all` checks them)")
    else:
        lines.append("upload marks: none in the journal")
    if result.findings.height:
        lines += ["", *findings_text(result.findings, examples=5, title="what the import could not map",
                                     more=f"recorded as findings of version {result.versions[0].label}; "
                                          "--json lists them all")]
    else:
        lines.append("everything in the journal was mapped")
    if result.status is not None:
        # (the check does not validate: no --no-validate was given, so none is named)
        unvalidated = (f"validation: not part of this check (`chorus-batch validate --db {result.db} --site "
                       f"{result.status.site}` checks the latest version; the next run validates what it commits)")  # type: ignore[attr-defined]
        lines += ["", "checked against the site as it is now:",
                  status_text(result.status, limit=20, unvalidated=unvalidated)]  # type: ignore[arg-type]
        refused = getattr(result.status, "refused", None)
        if refused is not None:
            # As `status` says it (exit 5): a --site that lists none or few of the files upstream recorded (a mount not
            # mounted, another copy) showed them all as "removed", with no word that the next run would refuse them.
            lines += ["", f"the next run would be refused (exit code 5): {refused}"]
    elif not result.dry_run:
        lines.append("next: chorus-batch status --db " + result.db + " --site <site> (what the next run will commit)")
    return "\n".join(lines)


def import_dict(result: ImportResult) -> dict[str, Any]:
    return {
        "journal": result.journal, "journal_schema": result.journal_schema, "db": result.db, "dry_run": result.dry_run,
        "central": result.central, "rows": result.n_rows,
        "versions": [{"label": v.label, "files": v.n_files, **v.counts, "update_runs": v.updates} for v in result.versions],
        "unchanged_updates": result.unchanged_updates, "upload_marks": result.n_marks,
        "findings": result.findings.to_dicts(),
        "site_check": status_dict(result.status) if result.status is not None else None,  # type: ignore[arg-type]
        "elapsed_s": round(result.elapsed_s, 3),
    }
