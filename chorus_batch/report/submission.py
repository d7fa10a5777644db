"""What `upload`, `verify` and `mark-uploaded` print: for a person (text) and for scripts (JSON)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from ..store.uploads import CONFLICT_FIX, DAMAGED, REWRITTEN, REWRITTEN_FIX
from ..units import human_bytes, plural, shown_name, shown_text

if TYPE_CHECKING:
    from ..submit.upload import UploadResult
    from ..submit.verify import VerifyResult

EXAMPLES = 10  # problem lines shown per version; --json lists them all
NOTHING_TO_DO = ("superseded",)  # files not sent that need nobody to act (listed after the others)


def _problem_lines(frame: pl.DataFrame, state_column: str) -> list[str]:
    lines = []
    counts = frame.group_by(state_column).len().sort(state_column).iter_rows()
    lines.append("    " + ", ".join(f"{state}: {n}" for state, n in counts))
    # The examples shown are first those someone has to act on: superseded files (nobody can send them, nothing to do)
    # came first in an upload's list, and a stale or missing file behind them was only "... N more".
    shown = frame.sort(pl.col(state_column).is_in(NOTHING_TO_DO), maintain_order=True).head(EXAMPLES)
    for srcfile, state, message in shown.select("srcfile", state_column, "message").iter_rows():
        # names and messages as a terminal may show them: a line break or an escape sequence in a file's name must
        # neither split the line nor drive the terminal (--json keeps them exact)
        lines.append(f"    {state}: {shown_name(srcfile)}: {shown_text(message)}")
    if frame.height > EXAMPLES:
        lines.append(f"    ... {frame.height - EXAMPLES} more (--json lists them all)")
    return lines


def upload_text(result: UploadResult) -> str:
    if not result.versions:
        return (f"nothing to upload: every version is completely uploaded to {result.central}"
                + ("\n" + _dry_run_line(result) if result.dry_run else ""))
    lines = []
    for v in result.versions:
        verb = "would send" if result.dry_run else "sent"
        head = (f"version {v.version} -> {result.central}/{v.version}/: {verb} {plural(v.n_sent - v.n_found, 'file')} "
                f"({human_bytes(v.bytes_sent)})")
        if v.n_found:  # (an interrupted upload had sent them, unrecorded)
            head += f"; {v.n_found} already at the centre with the manifest's MD5 (confirmed, not sent again)"
        if v.n_not_sent:  # (the words of the progress lines: sent / already at the centre / skipped)
            head += f"; {v.n_not_sent} skipped (listed below)"
        if v.n_before:
            head += f"; {v.n_before} sent before"
        lines.append(head + (f"; {v.n_files} of --modalities in its change set of {v.n_files + v.n_other}" if v.n_other
                             # (a version that only removes files: "0 in its change set" read as an empty version)
                             else "; its change set adds, replaces or renames no file: only its manifest copy goes "
                                  "to the centre" if not v.n_files else f"; {v.n_files} in its change set"))
        if v.validation_errors:  # (sent all the same: the centre decides; said, so that nobody takes it for clean)
            lines.append(f"  validation recorded {plural(v.validation_errors, 'error')} for this version (`chorus-batch "
                         f"report --version {v.version} --out report.html` lists them): "
                         f"{'would be sent' if result.dry_run else 'sent'} as it is")
        if v.n_not_sent:
            lines.append(f"  skipped, not sent: {plural(v.n_not_sent, 'file')}")
            lines.extend(_problem_lines(v.not_sent, "state"))
        if v.verify_problems is not None:
            if v.verify_problems.height:
                lines.append(f"  checked against the container: {plural(v.verify_problems.height, 'problem')}")
                lines.extend(_problem_lines(v.verify_problems, "verify_state"))
                if v.verify_problems.filter(pl.col("verify_state").is_in(DAMAGED)).height:
                    lines.append("  incomplete: run upload again (same --db and --to): it sends the missing and "
                                 "damaged files again")
                if v.verify_problems.filter(pl.col("verify_state") == REWRITTEN).height:
                    lines.append(f"  incomplete: {REWRITTEN_FIX}")
            elif v.unlisted is not None and v.unlisted.height:  # (not complete: said below)
                lines.append("  checked against the container's listing (size, Content-MD5): all its files there; "
                             "not complete while the blobs below are in its folder")
            else:
                lines.append("  complete; checked against the container's listing (size, Content-MD5): all there")
        elif not result.dry_run and not v.complete:
            conflicts = v.not_sent.filter(pl.col("state") == "conflict").height if v.n_not_sent else 0
            if conflicts:  # not mended by running again: "run upload again" sent people round in circles
                lines.append(f"  incomplete: {plural(conflicts, 'file')} in conflict with what the centre holds under "
                             f"{v.version}/: {CONFLICT_FIX}")
            if v.n_not_sent > conflicts or (not conflicts and not v.n_other_waiting):
                # "(or after the next run)" sent a site whose cron runs upload alone round in circles, and a run
                # does nothing for a file changed in place or unreadable: each line above says its own remedy.
                # ("once each file above is seen to as it says" said neither what was incomplete nor what to do)
                left = v.not_sent.filter(~pl.col("state").is_in(("conflict", *NOTHING_TO_DO))).height if v.n_not_sent else 0
                lines.append(f"  incomplete: {plural(left, 'file')} of this version not sent (listed above, each with "
                             "what to do): do that, then upload again; for a file changed or gone since the version, "
                             "run `chorus-batch run` first (it records the change; an upload alone does not)" if left
                             else "  incomplete: see the lines above; once each is dealt with as it says, upload again")
            if v.n_other_waiting:  # (left out on purpose: the version waits for them)
                lines.append(f"  incomplete: {plural(v.n_other_waiting, 'file')} of other modalities than --modalities "
                             "not uploaded yet: upload without --modalities (or with theirs) sends them and completes "
                             "the version")
        if v.unlisted is not None and v.unlisted.height:  # (the version stays unfinished: the next upload looks again)
            lines.extend(_unlisted_lines(v.unlisted, "upload"))
        if v.manifest_copy:
            lines.append(f"  manifest copy: {v.manifest_copy}")
        if v.copy_would_be:
            lines.append(f"  manifest copy: would be put at {v.copy_would_be}")
        if v.copy_kept:
            lines.append(f"  manifest copy: {v.copy_kept}, put there when the version was completed, "
                         f"{'would be ' if result.dry_run else ''}left as it is")
        if v.copy_refused:
            lines.append(f"  {'would add nothing' if result.dry_run else 'manifest copy refused'}: {v.copy_refused}")
    if result.earlier_waiting:
        from ..submit.upload import earlier_note

        lines.append("note: " + earlier_note(result.versions[0].version, result.earlier_waiting, result.central,
                                             dry_run=result.dry_run))
    if result.dry_run:
        lines.append(_dry_run_line(result))
    else:
        n = sum(v.n_sent - v.n_found for v in result.versions)
        size = sum(v.bytes_sent for v in result.versions)
        rate = f", {human_bytes(size / result.elapsed_s)}/s" if result.elapsed_s > 0 and size else ""
        found = sum(v.n_found for v in result.versions)
        skipped = sum(v.n_not_sent for v in result.versions)
        others = (f", {found} already at the centre" if found else "") + (f", {skipped} skipped" if skipped else "")
        lines.append(f"{plural(n, 'file')} ({human_bytes(size)}) sent{others} in {result.elapsed_s:.1f} s{rate}; "
                     "recorded in the manifest's uploads ledger")
    return "\n".join(lines)


def _dry_run_line(result: UploadResult) -> str:
    # What a dry run found out, and what it could not (a write would be needed to try write permission).
    return (f"dry run: signed in ({result.listed_as}) and listed {result.central}: the container is there and may be "
            "read; write permission is not tried (a dry run writes nothing); nothing was sent or recorded")


def upload_dict(result: UploadResult) -> dict[str, Any]:
    return {
        "central": result.central, "dry_run": result.dry_run, "signed_in_as": result.listed_as, "elapsed_s": round(result.elapsed_s, 3),
        "exit_code": int(result.exit_code), "earlier_waiting": result.earlier_waiting,
        "versions": [{
            "version": v.version, "files": v.n_files, "sent_before": v.n_before, "sent": v.n_sent - v.n_found, "found": v.n_found,
            "bytes_sent": v.bytes_sent, "complete": v.complete, "other_modalities_waiting": v.n_other_waiting, "manifest_copy": v.manifest_copy,
            "manifest_copy_refused": v.copy_refused, "manifest_copy_kept": v.copy_kept,
            "manifest_copy_would_be": v.copy_would_be,
            "validation_errors": v.validation_errors,
            "not_sent": v.not_sent.to_dicts(),
            "verify_problems": None if v.verify_problems is None else v.verify_problems.to_dicts(),
            "unlisted": None if v.unlisted is None else v.unlisted.to_dicts(),
        } for v in result.versions],
    }


def verify_text(result: VerifyResult) -> str:
    if result.not_uploaded:
        return (f"not verified: no file of version {result.not_uploaded} is recorded as uploaded to {result.central}\n"
                f"  fix:   upload it first: chorus-batch upload --version {result.not_uploaded} (same --db and --to): it sends "
                "it, or says why it cannot")
    if not result.versions and result.elsewhere:
        return (f"not verified: no file is recorded as uploaded to {result.central}; the uploads ledger records files "
                f"uploaded to {', '.join(result.elsewhere)}\n"
                f"  fix:   check --to (or [central] to): verify checks the container the files were uploaded to")
    if not result.versions and not result.waiting.height:
        return (f"nothing to verify: no file is recorded as uploaded to {result.central} (the container is there and "
                "can be listed with this sign-in)")
    how = ("read back and hashed" if result.method == "download"
           else "listing: there, size and Content-MD5 (--download reads the bytes)")
    copies = f" and {plural(result.n_copies, 'manifest copy', 'manifest copies')}" if not result.n_checked else ""
    shown = ", ".join(result.versions[:5]) + (", ..." if len(result.versions) > 5 else "")
    lines = [f"verified {plural(result.n_checked, 'file')}{copies} of {plural(len(result.versions), 'version')} ({shown}) at "
             f"{result.central} ({how}) in {result.elapsed_s:.1f} s" if result.n_checked or result.n_copies else
             f"not verified: no file is recorded as uploaded to {result.central}" if not result.versions else
             # (the versions' only files recorded there are in conflict, listed below: there was nothing to verify)
             f"not verified: no file of {plural(len(result.versions), 'version')} ({', '.join(result.versions)}) is "
             f"recorded as uploaded to {result.central}"]
    if result.problems.height:
        lines.append(f"  {plural(result.problems.height, 'problem')} (recorded in the uploads ledger):")
        for version, frame in result.problems.group_by("version", maintain_order=True):
            lines.append(f"  version {version[0]}:")
            lines.extend(_problem_lines(frame, "verify_state"))
        if result.problems.filter(pl.col("verify_state").is_in(DAMAGED)).height:
            lines.append("  fix:   run `chorus-batch upload` (same --db and --to): it sends the missing and damaged "
                         "files again")
        if result.problems.filter(pl.col("verify_state") == "no_md5").height:
            lines.append("  fix:   `chorus-batch verify --download` checks the bytes of blobs without a Content-MD5")
        if result.problems.filter(pl.col("verify_state") == REWRITTEN).height:
            lines.append(f"  fix:   {REWRITTEN_FIX}")
    elif not result.unlisted.height and not result.waiting.height:
        lines.append("  all as recorded")
    elif not result.unlisted.height and result.versions:
        lines.append("  the files uploaded are as recorded")
    if result.unlisted.height:
        lines.extend(_unlisted_lines(result.unlisted, "verify"))
    if result.waiting.height:  # (verify checks what was uploaded: the rest is no part of "as recorded")
        lines.append("  not uploaded yet (verify checks only the files recorded as uploaded):")
        for version, n, files in result.waiting.iter_rows():
            lines.append(f"  version {version}: {n} of its {plural(files, 'file')} not uploaded yet")
        lines.append("  fix:   run `chorus-batch upload` (same --db and --to): it sends them, or says why it cannot; "
                     "then verify again")
    return "\n".join(lines)


def _unlisted_lines(unlisted: pl.DataFrame, command: str) -> list[str]:
    """The blobs under a version's folder that are no file of its change set (verify's and upload's words)."""
    lines = [f"  {plural(unlisted.height, 'blob')} at the centre that the manifest does not list "
             "(a reviewer there would take them for part of the submission; not in the ledger):"]
    for version, frame in unlisted.group_by("version", maintain_order=True):
        names = frame["name"].head(EXAMPLES).to_list()
        more = f", ... {frame.height - EXAMPLES} more (--json lists them all)" if frame.height > EXAMPLES else ""
        # (named within the version's folder, as --json names them and as the problem lines name files: the text had
        # "<version>/name", which is neither the JSON's name nor, under --to az://container/prefix/, the blob's)
        lines.append(f"  version {version[0]}: {frame.height}: " + ", ".join(shown_name(n) for n in names) + more)
    lines.append("  fix:   have them removed from the central container, or moved out of the version's folder "
                 f"(chorus-batch never deletes there); then {command} again")
    return lines


def verify_dict(result: VerifyResult) -> dict[str, Any]:
    return {"central": result.central, "method": result.method, "versions": result.versions,
            "files": result.n_checked, "manifest_copies": result.n_copies, "exit_code": int(result.exit_code),
            "problems": result.problems.to_dicts(),
            "unlisted": result.unlisted.to_dicts(), "not_uploaded": result.not_uploaded,
            "not_uploaded_yet": result.waiting.to_dicts(),
            "uploaded_elsewhere": result.elsewhere}
